//! Resolve a `user` string (`uid[:gid]`, numbers or names) against the
//! container's /etc/passwd and /etc/group.
//!
//! Pure parsing: the caller reads the files (after pivot_root, so they are the
//! container's). Missing files read as empty. Sets no credentials itself.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UserError {
    #[error("user {0:?} not found in the container's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the container's /etc/group")]
    UnknownGroup(String),
}

/// The credentials a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the primary group plus every group listing the
    /// user as a member (what initgroups(3) gives a login).
    pub groups: Vec<u32>,
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, uid, gid, _, home, ..] => Some(PasswdEntry {
                name,
                uid: uid.parse().ok()?,
                gid: gid.parse().ok()?,
                home,
            }),
            _ => None,
        }
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, gid, rest @ ..] => {
                let members = rest.first().map_or(Vec::new(), |m| {
                    m.split(',').filter(|m| !m.is_empty()).collect()
                });
                Some((*name, gid.parse().ok()?, members))
            }
            _ => None,
        }
    })
}

/// Resolve `spec` (None = root). A numeric uid without a passwd entry is
/// allowed, with gid 0 and home `/`, as docker does.
pub fn resolve(spec: Option<&str>, passwd: &str, group: &str) -> Result<User, UserError> {
    let spec = spec.unwrap_or("0");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|e| e.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser(user_part.to_owned()))?,
        ),
    };
    let uid = entry
        .as_ref()
        .map_or_else(|| user_part.parse().unwrap_or(0), |e| e.uid);
    let gid = match group_part {
        None => entry.as_ref().map_or(0, |e| e.gid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_owned()))?,
        },
    };
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in group_entries(group) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    let home = entry.as_ref().map_or("/", |e| e.home).to_owned();
    Ok(User {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          spore:x:1000:1000:spore:/home/spore:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
                          broken line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:spore,other\nspore:x:1000:\nnogroup:x:65534:\n";

    #[test]
    fn default_is_root() {
        let u = resolve(None, PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups, u.home.as_str()),
            (0, 0, vec![0], "/root")
        );
    }

    #[test]
    fn names_resolve_with_supplementary_groups() {
        let u = resolve(Some("spore"), PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.groups, vec![1000, 10]);
        assert_eq!(u.home, "/home/spore");
        let n = resolve(Some("nobody"), PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid), (65534, 65534));
    }

    #[test]
    fn numbers_and_group_names_mix() {
        let u = resolve(Some("1000:nogroup"), PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 65534));
        let u = resolve(Some("4242:7"), PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.groups, u.home.as_str()),
            (4242, 7, vec![7], "/")
        );
        let u = resolve(Some("4242"), PASSWD, GROUP).unwrap();
        assert_eq!(u.gid, 0);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(
            resolve(Some("alice"), PASSWD, GROUP),
            Err(UserError::UnknownUser("alice".into()))
        );
        assert_eq!(
            resolve(Some("root:staff"), PASSWD, GROUP),
            Err(UserError::UnknownGroup("staff".into()))
        );
        assert!(resolve(Some("root"), "", "").is_err());
    }
}
