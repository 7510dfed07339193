//! Socket-LB: the cgroup sock_addr programs, attached to one cgroup v2 directory with pinned
//! links. A restart attaches the fresh programs next to the old ones (the cgroup allows
//! several) before removing the old links, so no connect() ever misses translation.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;

use crate::error::{prog_err, Error, Result};

pub const PROGRAMS: [&str; 4] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
];

pub struct SockLb {
    object: Ebpf,
}

impl SockLb {
    pub fn load(pin_path: &Path, sizes: &crate::MapSizes) -> Result<Self> {
        let mut object = crate::loader::load_object("sock", crate::objects::SOCK, pin_path, sizes)?;
        for name in PROGRAMS {
            program(&mut object, name)?.load().map_err(prog_err(name))?;
        }
        Ok(Self { object })
    }

    /// Attaches every program to `cgroup`, then removes links a previous run pinned.
    pub fn attach(&mut self, pin_path: &Path, cgroup: &Path) -> Result<()> {
        let links = pin_path.join("links");
        std::fs::create_dir_all(&links).map_err(|source| Error::PinnedLink {
            path: links.clone(),
            source,
        })?;
        let old = pinned(&links);
        let generation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let file = File::open(cgroup).map_err(|e| Error::Attach {
            program: "sock_connect4",
            ifname: cgroup.display().to_string(),
            reason: format!("opening cgroup: {e}"),
        })?;
        for name in PROGRAMS {
            let fail = |reason: String| Error::Attach {
                program: name,
                ifname: cgroup.display().to_string(),
                reason,
            };
            let prog = program(&mut self.object, name)?;
            // bpf_link attachments to cgroups are always "multi" and take no flags: `Single`
            // is what makes aya pass 0.
            let id = prog
                .attach(&file, CgroupAttachMode::Single)
                .map_err(|e| fail(error_chain(&e)))?;
            let link: FdLink = prog
                .take_link(id)
                .map_err(|e| fail(e.to_string()))?
                .try_into()
                .map_err(|e: aya::programs::links::LinkError| fail(e.to_string()))?;
            let pin = links.join(format!("cgroup-{name}-{generation}"));
            link.pin(&pin)
                .map_err(|e| fail(format!("pinning {}: {e}", pin.display())))?;
        }
        for path in old {
            crate::attach::remove_pin(&path)?;
        }
        Ok(())
    }

    /// Detaches socket-LB everywhere this pin path attached it.
    pub fn detach_all(pin_path: &Path) -> Result<usize> {
        let old = pinned(&pin_path.join("links"));
        for path in &old {
            crate::attach::remove_pin(path)?;
        }
        Ok(old.len())
    }

    pub fn is_attached(pin_path: &Path) -> bool {
        pinned(&pin_path.join("links")).len() >= PROGRAMS.len()
    }
}

/// aya's errors keep the errno in their source chain; show all of it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn pinned(links: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(links)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cgroup-"))
        .map(|e| e.path())
        .collect()
}

fn program<'a>(object: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr> {
    let p = object.program_mut(name).ok_or_else(|| Error::Attach {
        program: name,
        ifname: String::new(),
        reason: "program missing from the object".into(),
    })?;
    p.try_into().map_err(prog_err(name))
}
