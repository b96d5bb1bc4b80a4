//! Addresses that connect in a loop, turned away by the kernel before they cost an accept.
//!
//! The connection budget ([`super::connection_budget`]) refuses a host that opens connections
//! faster than [`NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC`], but a refusal still costs the
//! whole life of a connection: the kernel's handshake, our accept, and our close (a reset, as the
//! host's bytes were never read). A host refused [`SHUN_AFTER_REFUSALS_IN_A_SECOND`] times
//! within a second is shunned for [`SHUN_FOR`]: a socket filter on
//! the listening socket (classic BPF, Linux's `SO_ATTACH_FILTER`) drops its connection
//! requests (SYNs) before the kernel answers them. It costs us a few instructions per packet
//! instead of a connection, and the looping host waits in `connect` for its retransmission
//! (a second or more) instead of spending, beside us, the CPU of a connection a few times a
//! millisecond. Its connections already open are not touched (a socket keeps the filter it had
//! when it was created; the accepting thread takes it off every connection it admits), and no
//! other address is.
//!
//! At most [`MAX_SHUNNED_ADDRESSES`] at once: beyond it, a looping host is refused one
//! connection at a time, as before. Where the filter cannot be set (not Linux, or the kernel
//! refuses it), nobody is shunned and that is logged once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

#[cfg(any(target_os = "linux", target_os = "android"))]
use socket2::{SockFilter, SockRef};

#[cfg(doc)]
use super::NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC;

/// Refusals within a second for opening new connections too fast, after which an address is
/// shunned: a second's worth of its allowed rate, so that it tried at twice that rate at
/// least. A client that opens its pool all at once is refused a few times at most; a host
/// that connects in a loop gets there within milliseconds.
pub const SHUN_AFTER_REFUSALS_IN_A_SECOND: u32 = 128;

/// How long a shunned address's new connections are dropped. Its connection requests are
/// retried by its kernel (after 1 s, 3 s, 7 s…), so an honest client behind the same address
/// gets in at the first retry after this.
pub const SHUN_FOR: Duration = Duration::from_secs(5);

/// Addresses shunned at once at most: the filter is a program with a few instructions per
/// address, checked on every connection request.
pub const MAX_SHUNNED_ADDRESSES: usize = 64;

/// The addresses a listening socket drops connection requests from, and until when.
#[derive(Default)]
pub struct Shunned {
    until: HashMap<IpAddr, Instant>,
    /// Set once the kernel refused the filter: shunning is off from then on.
    unavailable: bool,
}

impl Shunned {
    /// Shuns `address` on `listener` from `now` for [`SHUN_FOR`]. True if it was not shunned
    /// before and is now; false if it already was, if [`MAX_SHUNNED_ADDRESSES`] are, or if the
    /// filter cannot be set.
    pub fn shun(&mut self, listener: &TcpListener, address: IpAddr, now: Instant) -> bool {
        let address = address.to_canonical();
        if self.unavailable || self.until.contains_key(&address) || self.until.len() >= MAX_SHUNNED_ADDRESSES {
            return false;
        }
        self.until.insert(address, now + SHUN_FOR);
        self.apply(listener);
        !self.unavailable
    }

    /// When the next shunned address is let back in, if any is shunned.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }

    /// Lets back in the addresses whose time is up at `now`.
    pub fn expire(&mut self, listener: &TcpListener, now: Instant) {
        let before = self.until.len();
        self.until.retain(|_, until| *until > now);
        if self.until.len() != before {
            self.apply(listener);
        }
    }

    /// Whether `address` is shunned now.
    #[cfg(test)]
    pub fn contains(&self, address: IpAddr) -> bool {
        self.until.contains_key(&address.to_canonical())
    }

    /// Sets `listener`'s filter to drop the shunned addresses (or takes it off if there are none).
    fn apply(&mut self, listener: &TcpListener) {
        if let Err(error) = set_filter(listener, self.until.keys().copied()) {
            tracing::warn!(%error, "cannot drop the connections of hosts that connect in a loop (a socket filter); they are refused one at a time instead");
            // A filter set before stays unless taken off, and nobody would let its addresses in.
            self.until.clear();
            let _ = set_filter(listener, std::iter::empty());
            self.unavailable = true;
        }
    }
}

/// Takes any filter off `stream`, a connection accepted while some address was shunned (it
/// copied its listener's filter): its own packets are never dropped by it, but they need not
/// run it either. A connection without one is left as it is.
pub fn clear_inherited_filter(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = SockRef::from(stream).detach_filter();
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_filter(listener: &TcpListener, addresses: impl Iterator<Item = IpAddr>) -> std::io::Result<()> {
    let addresses: Vec<IpAddr> = addresses.collect();
    let socket = SockRef::from(listener);
    if addresses.is_empty() {
        return match socket.detach_filter() {
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            detached => detached,
        };
    }
    socket.attach_filter(&dropping(&addresses))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_filter(_: &TcpListener, _: impl Iterator<Item = IpAddr>) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

// Classic BPF (Documentation/networking/filter.rst): the instruction codes this program uses.
#[cfg(any(target_os = "linux", target_os = "android"))]
mod bpf {
    /// A = the byte at k (`BPF_LD | BPF_B | BPF_ABS`).
    pub const LOAD_BYTE: u16 = 0x30;
    /// A = the 32-bit word at k, in network order (`BPF_LD | BPF_W | BPF_ABS`).
    pub const LOAD_WORD: u16 = 0x20;
    /// A >>= k (`BPF_ALU | BPF_RSH | BPF_K`).
    pub const SHIFT_RIGHT: u16 = 0x74;
    /// Skip jt instructions if A == k, else jf (`BPF_JMP | BPF_JEQ | BPF_K`).
    pub const JUMP_IF_EQUAL: u16 = 0x15;
    /// Return k: the bytes of the packet to keep, 0 to drop it (`BPF_RET | BPF_K`).
    pub const RETURN: u16 = 0x06;
    /// Offsets from here address the packet's IP header (`SKF_NET_OFF`, -0x100000): a TCP
    /// socket's filter sees the packet from its TCP header on.
    pub const IP_HEADER: u32 = 0xfff0_0000;
    pub const KEEP: u32 = u32::MAX;
    pub const DROP: u32 = 0;
}

/// The filter program that drops every packet from `addresses` and keeps the rest. IPv4
/// addresses (as such or IPv4-mapped) are matched in IPv4 packets, the others in IPv6 ones.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn dropping(addresses: &[IpAddr]) -> Vec<SockFilter> {
    use bpf::*;
    let op = |code, k| SockFilter::new(code, 0, 0, k);
    // If A == k, go on to the next instruction (a drop); else skip it.
    let drop_if = |k| [SockFilter::new(JUMP_IF_EQUAL, 0, 1, k), op(RETURN, DROP)];
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for address in addresses {
        match address.to_canonical() {
            IpAddr::V4(v4_address) => v4.push(u32::from(v4_address)),
            IpAddr::V6(v6_address) => v6.push(v6_address.octets()),
        }
    }
    // IPv4: the source address is the word at 12.
    let mut ipv4 = vec![op(LOAD_WORD, IP_HEADER + 12)];
    for address in v4 {
        ipv4.extend(drop_if(address));
    }
    ipv4.push(op(RETURN, KEEP));
    // IPv6: the source address is the four words at 8; a word that differs skips to the next
    // address (past what is left of this one's 8 instructions), the last one that is equal drops.
    let mut ipv6 = Vec::new();
    for octets in v6 {
        let words = octets
            .chunks(4)
            .map(|word| u32::from_be_bytes(word.try_into().expect("4 bytes")));
        for (i, word) in (0u32..).zip(words) {
            ipv6.push(op(LOAD_WORD, IP_HEADER + 8 + 4 * i));
            let rest = u8::try_from(6 - 2 * i).expect("small") + 1;
            ipv6.push(SockFilter::new(JUMP_IF_EQUAL, 0, rest, word));
        }
        ipv6.push(op(RETURN, DROP));
    }
    ipv6.push(op(RETURN, KEEP));
    // The IP version is the high half of the header's first byte.
    let mut program = vec![op(LOAD_BYTE, IP_HEADER), op(SHIFT_RIGHT, 4)];
    // Version 4: the IPv4 block; else version 6: the IPv6 block; else keep.
    let past_ipv4 = u8::try_from(ipv4.len()).expect("at most MAX_SHUNNED_ADDRESSES addresses");
    program.push(SockFilter::new(JUMP_IF_EQUAL, 0, past_ipv4, 4));
    program.extend(ipv4);
    program.push(SockFilter::new(JUMP_IF_EQUAL, 1, 0, 6));
    program.push(op(RETURN, KEEP));
    program.extend(ipv6);
    program
}

/// For tests: whether a connection request is answered or dropped, told by the kernel rather
/// than by a timeout, so that a slow machine cannot pass for a filter.
#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
pub(crate) mod testing {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use socket2::{Domain, Socket, Type};
    use tokio::time::Instant;

    /// What became of a connection request.
    pub enum Request {
        /// Answered: the connection is open (a blocking socket).
        Made(std::net::TcpStream),
        /// Dropped: its SYN went unanswered until it was sent again (1 s later). On loopback a
        /// listener answers at once, in the kernel, whatever its process is doing; only a
        /// filter, or an accept queue that is full, leaves a SYN unanswered.
        Dropped,
    }

    /// How long a request may take to be answered or sent again, however slow the machine.
    const DEADLINE: Duration = Duration::from_secs(30);
    /// How often its state is looked at meanwhile.
    const POLL: Duration = Duration::from_millis(2);

    /// Asks for a connection from `from` (a local address) to `to`, and says what became of it.
    pub async fn request(from: IpAddr, to: SocketAddr) -> Request {
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
        socket.set_nonblocking(true).unwrap();
        match socket.connect(&to.into()) {
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
            connected => connected.unwrap(),
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            if socket.peer_addr().is_ok() {
                socket.set_nonblocking(false).unwrap();
                return Request::Made(socket.into());
            }
            if let Some(error) = socket.take_error().unwrap() {
                panic!("the connection request from {from} was refused: {error}");
            }
            if syn_sent_again(&socket) {
                return Request::Dropped;
            }
            assert!(
                Instant::now() < deadline,
                "a connection request from {from} neither answered nor sent again in {DEADLINE:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether `socket`'s SYN has been retransmitted (Linux's `TCP_INFO`).
    fn syn_sent_again(socket: &Socket) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, a plain C struct we own
        // and that any bytes are a valid value of; `len` is its size.
        let (info, got) = unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let got = libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&raw mut info).cast(),
                &raw mut len,
            );
            (info, got)
        };
        assert_eq!(got, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_retransmits > 0 || info.tcpi_total_retrans > 0
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use std::net::SocketAddr;

    use super::testing::{request, Request};
    use super::*;

    /// Whether a connection request from `from` to `to` is answered (else it was dropped).
    async fn connects(from: IpAddr, to: SocketAddr) -> bool {
        matches!(request(from, to).await, Request::Made(_))
    }

    #[tokio::test]
    async fn a_shunned_address_cannot_connect_until_its_time_is_up_and_the_others_can() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let (looping, other) = ([127, 0, 0, 2].into(), [127, 0, 0, 3].into());
        let mut shunned = Shunned::default();
        let now = Instant::now();
        assert!(shunned.shun(&listener, looping, now), "shunned (the filter is set)");
        assert!(!shunned.shun(&listener, looping, now), "once");
        assert!(shunned.contains(looping) && !shunned.contains(other));
        assert_eq!(shunned.next_expiry(), Some(now + SHUN_FOR));
        assert!(!connects(looping, to).await, "the shunned address got in");
        assert!(connects(other, to).await, "another address was kept out");
        assert!(connects([127, 0, 0, 1].into(), to).await);
        // Not yet: still shunned. Then its time is up, and the filter comes off.
        shunned.expire(&listener, now + SHUN_FOR - Duration::from_millis(1));
        assert!(shunned.contains(looping));
        shunned.expire(&listener, now + SHUN_FOR);
        assert!(!shunned.contains(looping) && shunned.next_expiry().is_none());
        assert!(connects(looping, to).await, "let back in once its time was up");
    }

    #[tokio::test]
    async fn many_addresses_are_shunned_up_to_the_limit_and_each_is_matched_exactly() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let mut shunned = Shunned::default();
        let now = Instant::now();
        // IPv6 addresses too, which the IPv4 packets must skip, and an IPv4-mapped one.
        assert!(shunned.shun(&listener, "2001:db8::1".parse().unwrap(), now));
        assert!(shunned.shun(&listener, "::ffff:127.0.0.4".parse().unwrap(), now));
        for host in 10..(10 + MAX_SHUNNED_ADDRESSES as u8 - 2) {
            assert!(shunned.shun(&listener, [127, 0, 1, host].into(), now));
        }
        assert!(
            !shunned.shun(&listener, [127, 0, 2, 1].into(), now),
            "one beyond the limit"
        );
        assert!(!connects([127, 0, 0, 4].into(), to).await, "the IPv4-mapped address");
        assert!(!connects([127, 0, 1, 10].into(), to).await, "the first");
        assert!(!connects([127, 0, 1, 71].into(), to).await, "the last");
        assert!(connects([127, 0, 2, 1].into(), to).await, "the one beyond the limit");
        assert!(connects([127, 0, 1, 9].into(), to).await, "a neighbour of the first");
    }

    #[tokio::test]
    async fn an_ipv6_address_is_shunned_on_an_ipv6_listener() {
        // Skipped where the machine has no IPv6 loopback.
        let Ok(listener) = TcpListener::bind("[::1]:0").await else {
            return;
        };
        let to = listener.local_addr().unwrap();
        let mut shunned = Shunned::default();
        let now = Instant::now();
        assert!(shunned.shun(&listener, "::2".parse().unwrap(), now));
        assert!(connects("::1".parse().unwrap(), to).await, "a different IPv6 address");
        assert!(shunned.shun(&listener, "::1".parse().unwrap(), now));
        assert!(!connects("::1".parse().unwrap(), to).await, "the shunned one");
    }
}
