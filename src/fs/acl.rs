//! POSIX ACLs in their xattr form. With FUSE_POSIX_ACL the kernel checks permissions
//! against them; the filesystem stores them and keeps them in step with the mode: a new
//! node inherits its directory's default ACL, setting an access ACL sets the mode's bits,
//! and a chmod rewrites the access ACL (the kernel does none of these for FUSE).

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq)]
struct AclEntry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// An ACL as the kernel encodes it (`posix_acl_xattr`): entries in the kernel's order.
#[derive(Clone, Debug, PartialEq)]
pub struct Acl(Vec<AclEntry>);

impl Acl {
    /// None when `b` is not a well-formed ACL with the three base entries.
    pub fn parse(b: &[u8]) -> Option<Acl> {
        if b.len() < 4 || (b.len() - 4) % 8 != 0 || u32::from_le_bytes(b[..4].try_into().ok()?) != VERSION {
            return None;
        }
        let entries: Vec<AclEntry> = b[4..]
            .chunks_exact(8)
            .map(|c| AclEntry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let has = |t| entries.iter().filter(|e| e.tag == t).count() == 1;
        let extended = entries.iter().any(|e| e.tag == USER || e.tag == GROUP);
        let known = entries.iter().all(|e| [USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER].contains(&e.tag) && e.perm <= 7);
        if !known || !has(USER_OBJ) || !has(GROUP_OBJ) || !has(OTHER) || (extended && !has(MASK)) {
            return None;
        }
        Some(Acl(entries))
    }

    /// The same ACL with its named users' and groups' ids mapped (a remapped clone shows and
    /// stores them as it does owners); None if one has no image.
    pub fn map_ids(&self, uid: impl Fn(u32) -> Option<u32>, gid: impl Fn(u32) -> Option<u32>) -> Option<Acl> {
        let mut out = self.clone();
        for e in &mut out.0 {
            e.id = match e.tag {
                USER => uid(e.id)?,
                GROUP => gid(e.id)?,
                _ => e.id,
            };
        }
        Some(out)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    /// The permission bits the ACL implies, and whether it says more than they can
    /// (`posix_acl_equiv_mode`): an ACL that does not is kept as the mode alone.
    pub fn mode(&self) -> (u32, bool) {
        let (mut mode, mut extended) = (0u32, false);
        for e in &self.0 {
            let p = e.perm as u32 & 7;
            match e.tag {
                USER_OBJ => mode |= p << 6,
                GROUP_OBJ => mode |= p << 3,
                OTHER => mode |= p,
                MASK => {
                    mode = (mode & !0o070) | (p << 3);
                    extended = true;
                }
                _ => extended = true,
            }
        }
        (mode, extended)
    }

    /// Masks a default ACL by a new node's requested `mode` (`posix_acl_create_masq`):
    /// returns the node's permission bits; the ACL becomes its access ACL.
    pub fn create_masq(&mut self, mode: u32) -> u32 {
        let mut m = mode & 0o777;
        for e in self.0.iter_mut() {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((m >> 6) & 7) as u16;
                    m &= ((e.perm as u32) << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= (m & 7) as u16;
                    m &= e.perm as u32 | !0o007;
                }
                _ => {}
            }
        }
        let tag = if self.0.iter().any(|e| e.tag == MASK) { MASK } else { GROUP_OBJ };
        if let Some(e) = self.0.iter_mut().find(|e| e.tag == tag) {
            e.perm &= ((m >> 3) & 7) as u16;
            m &= ((e.perm as u32) << 3) | !0o070;
        }
        (mode & !0o777) | m
    }

    /// Rewrites the entries a chmod to `mode` changes (`posix_acl_chmod`): owner, mask (or
    /// owning group without one) and other.
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in self.0.iter_mut() {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                MASK => e.perm = ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries.iter().map(|&(tag, perm, id)| AclEntry { tag, perm, id }).collect())
    }

    #[test]
    fn round_trip_and_validation() {
        let a = acl(&[(USER_OBJ, 7, 0), (USER, 5, 1000), (GROUP_OBJ, 5, 0), (MASK, 7, 0), (OTHER, 0, 0)]);
        assert_eq!(Acl::parse(&a.encode()), Some(a.clone()));
        assert_eq!(Acl::parse(b"\x02\0\0\0"), None, "no base entries");
        let no_mask = acl(&[(USER_OBJ, 7, 0), (USER, 5, 1000), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]);
        assert_eq!(Acl::parse(&no_mask.encode()), None, "named entries need a mask");
        let mut bad = a.encode();
        bad[0] = 1;
        assert_eq!(Acl::parse(&bad), None, "version 1");
    }

    #[test]
    fn mode_create_and_chmod_follow_the_kernel() {
        let minimal = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        assert_eq!(minimal.mode(), (0o644, false));
        let mut d = acl(&[(USER_OBJ, 7, 0), (USER, 7, 1000), (GROUP_OBJ, 5, 0), (MASK, 7, 0), (OTHER, 5, 0)]);
        assert_eq!(d.mode(), (0o775, true));
        // A file created with 0666 under that default ACL: rw for owner, mask rw, other r.
        assert_eq!(d.create_masq(0o100666), 0o100664);
        assert_eq!(d, acl(&[(USER_OBJ, 6, 0), (USER, 7, 1000), (GROUP_OBJ, 5, 0), (MASK, 6, 0), (OTHER, 4, 0)]));
        d.chmod(0o640);
        assert_eq!(d, acl(&[(USER_OBJ, 6, 0), (USER, 7, 1000), (GROUP_OBJ, 5, 0), (MASK, 4, 0), (OTHER, 0, 0)]));
        assert_eq!(d.mode(), (0o640, true));
    }
}
