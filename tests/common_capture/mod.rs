//! Large synthetic captures and WAV files for the memory tests of `replay`, `analyze` and
//! `dtmf detect`, and the peak memory of a child process.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// LINKTYPE_RAW: every frame is an IP packet.
const LINKTYPE_RAW: u32 = 101;
/// G.711 μ-law samples per 20 ms packet.
const FRAME: usize = 160;

/// Writes a pcap of `calls` calls one after the other, each `seconds` long: one PCMU stream
/// per call (its own ports, its own SSRC, a packet every 20 ms) with an in-band `#` one
/// second in. Returns the number of packets.
pub fn write_calls(path: &Path, calls: u32, seconds: u32) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    // pcap global header: magic (µs), version 2.4, zone, sigfigs, snaplen, link type.
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes()).unwrap();
    out.write_all(&2u16.to_le_bytes()).unwrap();
    out.write_all(&4u16.to_le_bytes()).unwrap();
    out.write_all(&[0; 8]).unwrap();
    out.write_all(&65_535u32.to_le_bytes()).unwrap();
    out.write_all(&LINKTYPE_RAW.to_le_bytes()).unwrap();

    let spec = dtmf::ToneSpec {
        on_ms: 100,
        off_ms: 1000,
        ..dtmf::ToneSpec::default()
    };
    let pound: Vec<u8> = dtmf::generate("#", &spec)
        .iter()
        .map(|&s| media::g711::linear_to_ulaw(s))
        .collect();
    let silence = media::g711::linear_to_ulaw(0);
    let packets_per_call = seconds as usize * 50;
    let mut packets = 0u64;
    let mut t_us: u64 = 0;
    for call in 0..calls {
        let src_port = 20_000 + (call % 20_000) as u16 * 2;
        let ssrc = 0x1000_0000 + call;
        for n in 0..packets_per_call {
            let mut payload = [silence; FRAME];
            for (i, b) in payload.iter_mut().enumerate() {
                if let Some(&p) = pound.get(n * FRAME + i) {
                    *b = p;
                }
            }
            let mut rtp = Vec::with_capacity(12 + FRAME);
            rtp.extend_from_slice(&[0x80, 0]);
            rtp.extend_from_slice(&(n as u16).to_be_bytes());
            rtp.extend_from_slice(&((n * FRAME) as u32).to_be_bytes());
            rtp.extend_from_slice(&ssrc.to_be_bytes());
            rtp.extend_from_slice(&payload);
            let packet = ipv4_udp([10, 0, 0, 1], src_port, [10, 0, 0, 2], 40_000, &rtp);
            out.write_all(&((t_us / 1_000_000) as u32).to_le_bytes())
                .unwrap();
            out.write_all(&((t_us % 1_000_000) as u32).to_le_bytes())
                .unwrap();
            out.write_all(&(packet.len() as u32).to_le_bytes()).unwrap();
            out.write_all(&(packet.len() as u32).to_le_bytes()).unwrap();
            out.write_all(&packet).unwrap();
            t_us += 20_000;
            packets += 1;
        }
    }
    out.flush().unwrap();
    packets
}

/// An IPv4/UDP packet (checksums left zero: nothing here checks them).
fn ipv4_udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

/// Writes a 16-bit 8 kHz mono WAV of `seconds` of quiet noise with a `#` every ten seconds.
pub fn write_wav(path: &Path, seconds: u32) {
    let spec = dtmf::ToneSpec {
        on_ms: 100,
        off_ms: 100,
        ..dtmf::ToneSpec::default()
    };
    let mut block = dtmf::generate("#", &spec);
    block.resize(80_000, 0);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let bytes: Vec<u8> = block
        .iter()
        .flat_map(|&s| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.saturating_add(((seed >> 56) as i16) - 128).to_le_bytes()
        })
        .collect();
    let data_len = bytes.len() as u32 * seconds.div_ceil(10);
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(b"RIFF").unwrap();
    out.write_all(&(36 + data_len).to_le_bytes()).unwrap();
    out.write_all(b"WAVEfmt ").unwrap();
    for field in [
        16u32.to_le_bytes(),
        [1, 0, 1, 0],
        8000u32.to_le_bytes(),
        16_000u32.to_le_bytes(),
        [2, 0, 16, 0],
    ] {
        out.write_all(&field).unwrap();
    }
    out.write_all(b"data").unwrap();
    out.write_all(&data_len.to_le_bytes()).unwrap();
    for _ in 0..seconds.div_ceil(10) {
        out.write_all(&bytes).unwrap();
    }
    out.flush().unwrap();
}

/// Runs `callverify args` to its end; its output and its peak resident memory (kB, the
/// kernel's maximum RSS of exactly that child, from wait4).
// The child is reaped by wait4 below (which std's wait cannot do: it gives no rusage).
#[allow(clippy::zombie_processes)]
pub fn callverify_peak(args: &[&str]) -> (Output, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_callverify"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let out = std::thread::scope(|scope| {
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let o = scope.spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut v).ok();
            v
        });
        let e = scope.spawn(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut stderr, &mut v).ok();
            v
        });
        (o.join().unwrap(), e.join().unwrap())
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child's pid with valid pointers; std's Child is not waited on
    // afterwards (its Drop does not wait), so the pid is reaped exactly once.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4 failed");
    let output = Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(status),
        stdout: out.0,
        stderr: out.1,
    };
    (output, usage.ru_maxrss as u64)
}
