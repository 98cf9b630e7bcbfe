//! A session's datagrams, gathered over one drain of its `Rtc` (the RTP packets of a frame,
//! mostly) and sent together with as few system calls as the kernel allows.
//!
//! On Linux a run of equal-sized datagrams to one address, optionally ended by one shorter
//! datagram, leaves in one `sendmsg` with UDP generic segmentation offload (`UDP_SEGMENT`): the
//! kernel takes it through its stack once and cuts it into the datagrams at the end (in the
//! network card, or on loopback where it is delivered). A frame's packets are such a run: the
//! packetizer fills each to the MTU but the last. Where GSO is refused (a kernel before 4.18, an
//! interface without checksum offload, IPsec), the run is sent again datagram by datagram and
//! GSO is not tried again. Other systems send datagram by datagram.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::UdpSocket;

/// Most datagrams one GSO send may carry (the kernel's `UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes one GSO send may carry (a UDP datagram's limit, less room for headers).
const GSO_MAX_BYTES: usize = 65_000;

/// Datagrams waiting to be sent, in order.
#[derive(Default)]
pub(super) struct Outbox {
    queue: Vec<(SocketAddr, Vec<u8>)>,
}

/// What one [`Outbox::flush`] sent: datagrams and their bytes (those the kernel took).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
}

impl Sent {
    fn count(&mut self, datagram: &[u8]) {
        self.datagrams += 1;
        self.bytes += datagram.len() as u64;
    }
}

impl Outbox {
    pub fn push(&mut self, to: SocketAddr, datagram: Vec<u8>) {
        self.queue.push((to, datagram));
    }

    /// Sends everything queued (in order) and empties the queue. `gso` says whether segmentation
    /// offload may be tried; it is cleared when the kernel refuses it while plain sends work.
    /// A datagram the kernel does not take is lost, as UDP may lose it anyway (logged).
    pub async fn flush(&mut self, socket: &UdpSocket, gso: &AtomicBool) -> Sent {
        let mut sent = Sent::default();
        let mut rest = self.queue.as_slice();
        while !rest.is_empty() {
            let n = if gso.load(Ordering::Relaxed) {
                run_len(rest)
            } else {
                1
            };
            let (run, tail) = rest.split_at(n.clamp(1, rest.len()));
            rest = tail;
            if run.len() > 1 {
                match send_run(socket, run).await {
                    Ok(()) => {
                        run.iter().for_each(|(_, d)| sent.count(d));
                        continue;
                    }
                    Err(e) => {
                        let before = sent.datagrams;
                        send_each(socket, run, &mut sent).await;
                        if sent.datagrams > before && gso.swap(false, Ordering::Relaxed) {
                            tracing::info!(error = %e,
                                "WebRTC: UDP segmentation offload refused; sending datagram by datagram");
                        }
                        continue;
                    }
                }
            }
            send_each(socket, run, &mut sent).await;
        }
        self.queue.clear();
        sent
    }
}

/// One `send_to` per datagram.
async fn send_each(socket: &UdpSocket, run: &[(SocketAddr, Vec<u8>)], sent: &mut Sent) {
    for (to, datagram) in run {
        match socket.send_to(datagram, to).await {
            Ok(_) => sent.count(datagram),
            Err(e) => tracing::debug!(error = %e, %to, "WebRTC send"),
        }
    }
}

/// How many datagrams from the start of `queue` one GSO send can carry: those to the first
/// one's address of its size, and at most one shorter one after them (the kernel cuts a GSO
/// payload into segments of the first's size; only the last may be shorter).
fn run_len(queue: &[(SocketAddr, Vec<u8>)]) -> usize {
    let Some(((to, first), rest)) = queue.split_first() else {
        return 0;
    };
    let size = first.len();
    let (mut n, mut bytes) = (1, size);
    for (addr, d) in rest {
        if addr != to
            || d.is_empty()
            || d.len() > size
            || n == GSO_MAX_SEGMENTS
            || bytes + d.len() > GSO_MAX_BYTES
        {
            break;
        }
        n += 1;
        bytes += d.len();
        if d.len() < size {
            break;
        }
    }
    n
}

/// Sends a run ([`run_len`]) as one datagram cut by the kernel into segments of the first's
/// size.
#[cfg(target_os = "linux")]
async fn send_run(socket: &UdpSocket, run: &[(SocketAddr, Vec<u8>)]) -> std::io::Result<()> {
    use std::io::IoSlice;
    let Some((to, first)) = run.first() else {
        return Ok(());
    };
    let segment = u16::try_from(first.len())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let addr = socket2::SockAddr::from(*to);
    let bufs: Vec<IoSlice<'_>> = run.iter().map(|(_, d)| IoSlice::new(d)).collect();
    let control = gso_control(segment);
    socket
        .async_io(tokio::io::Interest::WRITABLE, || {
            // Made here: a message header holds raw pointers (not `Send` across the await).
            let msg = socket2::MsgHdr::new()
                .with_addr(&addr)
                .with_buffers(&bufs)
                .with_control(&control);
            socket2::SockRef::from(socket).sendmsg(&msg, 0)
        })
        .await
        .map(|_| ())
}

#[cfg(not(target_os = "linux"))]
async fn send_run(_: &UdpSocket, _: &[(SocketAddr, Vec<u8>)]) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// `SOL_UDP` and `UDP_SEGMENT` (linux/udp.h).
#[cfg(target_os = "linux")]
const SOL_UDP: i32 = 17;
#[cfg(target_os = "linux")]
const UDP_SEGMENT: i32 = 103;

/// The kernel's `struct cmsghdr` is a `size_t` length and two `int`s, its data aligned to
/// `size_t`.
#[cfg(target_os = "linux")]
const WORD: usize = std::mem::size_of::<usize>();
#[cfg(target_os = "linux")]
const CMSG_HEADER: usize = (WORD + 8).div_ceil(WORD) * WORD;
#[cfg(target_os = "linux")]
const GSO_CONTROL_LEN: usize = CMSG_HEADER + 2usize.div_ceil(WORD) * WORD;

/// The control message asking for segments of `segment` bytes (a `u16`, as `CMSG_SPACE(2)`).
#[cfg(target_os = "linux")]
fn gso_control(segment: u16) -> [u8; GSO_CONTROL_LEN] {
    let mut c = [0u8; GSO_CONTROL_LEN];
    let len = CMSG_HEADER + 2;
    c[..WORD].copy_from_slice(&len.to_ne_bytes());
    c[WORD..WORD + 4].copy_from_slice(&SOL_UDP.to_ne_bytes());
    c[WORD + 4..WORD + 8].copy_from_slice(&UDP_SEGMENT.to_ne_bytes());
    c[CMSG_HEADER..CMSG_HEADER + 2].copy_from_slice(&segment.to_ne_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(sizes: &[(u16, usize)]) -> Vec<(SocketAddr, Vec<u8>)> {
        sizes
            .iter()
            .map(|(port, n)| (SocketAddr::from(([127, 0, 0, 1], *port)), vec![7; *n]))
            .collect()
    }

    #[test]
    fn runs_are_equal_sizes_to_one_address_and_one_shorter_last() {
        assert_eq!(run_len(&[]), 0);
        assert_eq!(run_len(&q(&[(1, 1200)])), 1);
        // A frame: full packets, then the shorter rest; the next frame starts a new run.
        assert_eq!(run_len(&q(&[(1, 1200), (1, 1200), (1, 700), (1, 1200)])), 3);
        assert_eq!(run_len(&q(&[(1, 1200), (1, 1200), (1, 1200)])), 3);
        // A larger one, another address or an empty datagram ends the run.
        assert_eq!(run_len(&q(&[(1, 100), (1, 1200)])), 1);
        assert_eq!(run_len(&q(&[(1, 1200), (2, 1200)])), 1);
        assert_eq!(run_len(&q(&[(1, 1200), (1, 0)])), 1);
        // The kernel's limits: 64 segments, 64 KiB.
        assert_eq!(run_len(&q(&[(1, 100); 100])), 64);
        assert_eq!(run_len(&q(&[(1, 1200); 100])), 54);
    }

    /// Through the real kernel: a queue of several runs arrives as the same datagrams, in
    /// order, each its own size, and is counted exactly; with GSO off too.
    #[tokio::test]
    async fn a_flush_delivers_every_datagram_as_it_was() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let sizes = [
            1200usize, 1200, 1200, 431, 90, 1200, 1200, 1200, 1200, 12, 1100,
        ];
        for gso_on in [true, false] {
            let mut out = Outbox::default();
            for (i, n) in sizes.iter().enumerate() {
                let d: Vec<u8> = (0..*n).map(|b| (b + i) as u8).collect();
                out.push(to, d);
            }
            let gso = AtomicBool::new(gso_on);
            let sent = out.flush(&tx, &gso).await;
            assert_eq!(sent.datagrams, sizes.len() as u64);
            assert_eq!(sent.bytes, sizes.iter().sum::<usize>() as u64);
            assert!(out.queue.is_empty());
            // Loopback takes GSO (Linux 4.18+): it stays on.
            assert_eq!(
                gso.load(Ordering::Relaxed),
                gso_on && cfg!(target_os = "linux")
            );
            let mut buf = [0u8; 2048];
            for (i, n) in sizes.iter().enumerate() {
                let (got, from) =
                    tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_from(&mut buf))
                        .await
                        .expect("in time")
                        .expect("recv");
                assert_eq!(from, tx.local_addr().expect("addr"));
                assert_eq!(got, *n, "datagram {i}");
                let want: Vec<u8> = (0..*n).map(|b| (b + i) as u8).collect();
                assert_eq!(&buf[..got], &want[..], "datagram {i}");
            }
        }
    }
}
