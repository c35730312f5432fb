//! Resetting a denied connection: `SOCK_DESTROY` through `NETLINK_SOCK_DIAG` (what `ss -K`
//! does; needs `CONFIG_INET_DIAG_DESTROY` and `CAP_NET_ADMIN`). The kernel aborts the
//! server-side socket, which sends the client a RST and gives the application `ECONNABORTED`
//! on a connection it never read a request from.

use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const IPPROTO_TCP: u8 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// A netlink socket in the network namespace it was opened in.
#[derive(Debug)]
pub(crate) struct SocketDestroyer {
    fd: OwnedFd,
    seq: u32,
}

impl SocketDestroyer {
    /// Opens the socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<SocketDestroyer> {
        let fd = rustix::net::socket(
            AddressFamily::NETLINK,
            SocketType::RAW,
            Some(netlink::SOCK_DIAG),
        )?;
        Ok(SocketDestroyer { fd, seq: 0 })
    }

    /// Aborts the TCP socket whose local end is `local` and remote end `remote`.
    pub(crate) fn destroy(
        &mut self,
        local: (IpAddr, u16),
        remote: (IpAddr, u16),
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let request = request(self.seq, local, remote);
        rustix::net::sendto(
            &self.fd,
            &request,
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        let mut answer = [0u8; 512];
        let (n, _) = rustix::net::recv(&self.fd, &mut answer, RecvFlags::empty())?;
        // nlmsghdr (16 bytes), then for NLMSG_ERROR an i32 error (0 = the ACK).
        if n >= 20 && u16::from_ne_bytes([answer[4], answer[5]]) == NLMSG_ERROR {
            let code = i32::from_ne_bytes([answer[16], answer[17], answer[18], answer[19]]);
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
        }
        Ok(())
    }
}

fn put_address(out: &mut [u8], address: IpAddr) {
    match address {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out[..16].copy_from_slice(&a.octets()),
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` naming one TCP socket, any state.
fn request(seq: u32, local: (IpAddr, u16), remote: (IpAddr, u16)) -> [u8; 72] {
    let mut m = [0u8; 72];
    m[0..4].copy_from_slice(&72u32.to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DESTROY.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    // inet_diag_req_v2
    m[16] = if local.0.is_ipv4() { AF_INET } else { AF_INET6 };
    m[17] = IPPROTO_TCP;
    m[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // idiag_states: all
    // inet_diag_sockid: sport, dport (network order), src[16], dst[16], if, cookie[2]
    m[24..26].copy_from_slice(&local.1.to_be_bytes());
    m[26..28].copy_from_slice(&remote.1.to_be_bytes());
    put_address(&mut m[28..44], local.0);
    put_address(&mut m[44..60], remote.0);
    m[64..72].copy_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    m
}
