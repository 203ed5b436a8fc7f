//! A sandbox's output log: stdout and stderr of its main process, in order, in
//! one file of multiplexed frames (the same framing the HTTP streams use), so a
//! `logs` request copies bytes straight from the file, and a restarted daemon
//! still has the output.
//!
//! Followers block on a condition variable until more is written or the log is
//! closed (the process ended).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::server::http::{encode_frame, FrameKind};

/// Where streamed output goes: a callback taking framed bytes.
pub type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> io::Result<()>;

/// How long a follower sleeps before re-checking (bounds a missed wakeup).
const FOLLOW_RECHECK: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct State {
    file: Option<File>,
    len: u64,
    closed: bool,
}

/// The log of one sandbox.
#[derive(Debug)]
pub struct OutputLog {
    path: PathBuf,
    state: Mutex<State>,
    grown: Condvar,
}

impl OutputLog {
    /// Creates (or truncates) the log file.
    pub fn create(path: &Path) -> io::Result<OutputLog> {
        let file = File::create(path)?;
        Ok(OutputLog {
            path: path.to_owned(),
            state: Mutex::new(State {
                file: Some(file),
                len: 0,
                closed: false,
            }),
            grown: Condvar::new(),
        })
    }

    /// Opens an existing log after a restart; `closed` when its process has ended.
    pub fn reopen(path: &Path, closed: bool) -> OutputLog {
        let file = OpenOptions::new().append(true).open(path).ok();
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        OutputLog {
            path: path.to_owned(),
            state: Mutex::new(State {
                file: if closed { None } else { file },
                len,
                closed,
            }),
            grown: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one chunk of output.
    pub fn append(&self, kind: FrameKind, data: &[u8]) -> io::Result<()> {
        let frame = encode_frame(kind, data);
        let mut st = self.lock();
        if let Some(f) = st.file.as_mut() {
            f.write_all(&frame)?;
            st.len += frame.len() as u64;
            self.grown.notify_all();
        }
        Ok(())
    }

    /// No more output will come.
    pub fn close(&self) {
        let mut st = self.lock();
        st.file = None;
        st.closed = true;
        self.grown.notify_all();
    }

    /// Copies framed bytes from `offset` to `out` until the end of what is written
    /// now (`follow == false`) or until the log is closed. Returns the new offset.
    pub fn copy_to(&self, mut offset: u64, follow: bool, out: Sink<'_>) -> io::Result<u64> {
        let mut file = File::open(&self.path)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (len, closed) = {
                let mut st = self.lock();
                while follow && st.len == offset && !st.closed {
                    st = self
                        .grown
                        .wait_timeout(st, FOLLOW_RECHECK)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                (st.len, st.closed)
            };
            file.seek(SeekFrom::Start(offset))?;
            while offset < len {
                let want = buf.len().min((len - offset) as usize);
                let n = file.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                out(&buf[..n])?;
                offset += n as u64;
            }
            if !follow || (closed && offset >= len) {
                return Ok(offset);
            }
        }
    }

    /// The whole log split into (stdout, stderr).
    pub fn collect(&self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut bytes = Vec::new();
        self.copy_to(0, false, &mut |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })?;
        Ok(split_frames(&bytes))
    }
}

/// Splits multiplexed frames into (stdout, stderr); ignores other kinds and a
/// truncated last frame.
pub fn split_frames(mut bytes: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while bytes.len() >= 8 {
        let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let Some(payload) = bytes.get(8..8 + len) else {
            break;
        };
        match FrameKind::from_u8(bytes[0]) {
            Some(FrameKind::Stdout) => out.extend_from_slice(payload),
            Some(FrameKind::Stderr) => err.extend_from_slice(payload),
            _ => {}
        }
        bytes = &bytes[8 + len..];
    }
    (out, err)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("spore-out-{}-{name}", std::process::id()))
    }

    #[test]
    fn appends_and_splits() {
        let path = tmp("a");
        let log = OutputLog::create(&path).unwrap();
        log.append(FrameKind::Stdout, b"hel").unwrap();
        log.append(FrameKind::Stderr, b"oops").unwrap();
        log.append(FrameKind::Stdout, b"lo").unwrap();
        let (out, err) = log.collect().unwrap();
        assert_eq!(out, b"hello");
        assert_eq!(err, b"oops");
        log.close();
        log.append(FrameKind::Stdout, b"late").unwrap();
        assert_eq!(log.collect().unwrap().0, b"hello");
        let again = OutputLog::reopen(&path, true);
        assert!(again.lock().closed);
        assert_eq!(again.collect().unwrap().1, b"oops");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn follow_ends_when_closed() {
        let path = tmp("f");
        let log = Arc::new(OutputLog::create(&path).unwrap());
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..5u8 {
                    log.append(FrameKind::Stdout, &[b'0' + i]).unwrap();
                    std::thread::sleep(Duration::from_millis(5));
                }
                log.close();
            })
        };
        let mut got = Vec::new();
        log.copy_to(0, true, &mut |b| {
            got.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        writer.join().unwrap();
        assert_eq!(split_frames(&got).0, b"01234");
        std::fs::remove_file(&path).unwrap();
    }
}
