//! One control connection: read a frame, parse, dispatch, reply; until the peer
//! closes or the connection becomes an attach stream. Malformed, oversized and
//! unknown requests get an error reply and the loop goes on.

use std::os::unix::net::UnixStream;

use super::dispatch::{self, Action};
use super::{attach, fixup, Shared};
use crate::protocol::frame::{self, FrameError};
use crate::protocol::messages::{parse_request, ErrorCode, ErrorReply, Reply, Response};

/// Serves `stream` until it closes.
pub(crate) fn serve(shared: &Shared, mut stream: UnixStream) {
    loop {
        let payload = match frame::read_frame(&mut stream) {
            Ok(p) => p,
            Err(FrameError::TooLarge(len)) => {
                let err = ErrorReply::new(
                    ErrorCode::BadFrame,
                    format!(
                        "frame of {len} bytes exceeds the {}-byte limit",
                        frame::MAX_FRAME
                    ),
                );
                if send(&mut stream, &Response::error(0, err)).is_err()
                    || frame::discard(&mut stream, len).is_err()
                {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        let req = match parse_request(&payload) {
            Ok(r) => r,
            Err(reply) => {
                if send(&mut stream, &reply).is_err() {
                    return;
                }
                continue;
            }
        };
        let id = req.id;
        let response = match dispatch::handle(shared, req.body) {
            Ok(Action::Reply(r)) => Response::ok(id, r),
            Ok(Action::Attach(pending)) => {
                let tty = pending.tty;
                if send(&mut stream, &Response::ok(id, Reply::Attached { tty })).is_ok() {
                    attach::run(stream, pending);
                }
                return;
            }
            Ok(Action::Shutdown) => {
                let _ = send(&mut stream, &Response::ok(id, Reply::Done));
                // Power-off must not overtake the reply: end our side, then give
                // the host a moment to read it and hang up.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.set_read_timeout(Some(SHUTDOWN_LINGER));
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
                drop(stream);
                fixup::shutdown(shared);
            }
            Err(e) => Response::error(id, e),
        };
        if send(&mut stream, &response).is_err() {
            return;
        }
    }
}

/// How long a shutdown waits for the host to read its reply and close.
const SHUTDOWN_LINGER: std::time::Duration = std::time::Duration::from_secs(1);

fn send(stream: &mut UnixStream, response: &Response) -> Result<(), FrameError> {
    frame::write_frame(stream, &response.to_bytes())
}
