//! BPF_PROG_TEST_RUN: run a loaded tc program on a crafted packet without any device.
//! aya 0.14 has no wrapper, so this is the raw bpf(2) command.

use std::os::fd::{AsFd, AsRawFd};

use aya::programs::SchedClassifier;

use crate::error::{Error, Result};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The prefix of `struct __sk_buff` the kernel lets a test set (mark, priority, ifindexes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct SkbContext {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    /// Device the program "runs on"; must exist (1 = loopback).
    pub ifindex: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

#[derive(Debug, Clone)]
pub struct TestRun {
    /// The program's return value (TC_ACT_*).
    pub retval: u32,
    /// The packet after the program rewrote it.
    pub packet: Vec<u8>,
    /// Mean nanoseconds per run.
    pub duration_ns: u32,
}

pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

pub fn run(
    program: &'static str,
    prog: &SchedClassifier,
    packet: &[u8],
    ctx: Option<SkbContext>,
    repeat: u32,
) -> Result<TestRun> {
    let fd = prog.fd().map_err(crate::error::prog_err(program))?;
    let mut out = vec![0u8; packet.len() + 256];
    let ctx_in = ctx.unwrap_or_default();
    let mut attr = TestRunAttr {
        prog_fd: fd.as_fd().as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: std::mem::size_of::<SkbContext>() as u32,
        ctx_in: &ctx_in as *const SkbContext as u64,
        ..Default::default()
    };
    // SAFETY: attr points at live buffers whose sizes are given alongside; the kernel writes at
    // most data_size_out bytes into `out` and updates attr in place.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc < 0 {
        return Err(Error::TestRun {
            program,
            source: std::io::Error::last_os_error(),
        });
    }
    out.truncate(attr.data_size_out as usize);
    Ok(TestRun {
        retval: attr.retval,
        packet: out,
        duration_ns: attr.duration,
    })
}
