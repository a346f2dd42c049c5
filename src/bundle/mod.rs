//! Runtime bundles: an unpacked rootfs plus the image's config become an OCI
//! runtime bundle (`BUNDLE/config.json` beside `BUNDLE/rootfs`), the last
//! step of `ocix unpack --image` (OCI image -> manifest -> rootfs -> bundle).
//!
//! The config.json is the one `umoci unpack` writes, field for field, so a
//! bundle made by either tool runs the same way:
//! - a fixed default template (capabilities, rlimits, mounts, masked and
//!   read-only paths, namespaces, a deny-all device cgroup);
//! - from the image config: args = Entrypoint + Cmd (the template's `sh`
//!   when both are empty), Env merged over the template's (same name
//!   replaces), cwd = WorkingDir or `/`, labels and six
//!   `org.opencontainers.image.*` fields as annotations, each Volume as a
//!   tmpfs mount, ExposedPorts as a comma-joined annotation;
//! - `User` resolved to numeric ids from the rootfs's own passwd and group
//!   files, read without ever leaving the rootfs ([`user`]), and `HOME` set
//!   from the passwd entry;
//! - with id mappings, a user namespace; with `rootless`, the variant an
//!   unprivileged user can run: the invoking user mapped to root, no network
//!   namespace, no cgroup resources, no additional gids, `/sys` bind-mounted
//!   instead of a new sysfs, no `uid=`/`gid=` mount options, and the host's
//!   `/etc/resolv.conf` bound read-only.
//!
//! Where ocix differs from umoci on purpose (see [`BundleOptions`] and the
//! functions' docs): the hostname (ocix's own), deterministic output (sorted
//! keys, sorted volumes), `/sys` mounts recognised by path component rather
//! than string prefix, and a missing host `/etc/resolv.conf` leaves that
//! bind out instead of failing.

pub mod user;

use crate::sys::{self, Errno, SysError};
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{LinuxIdMapping, LinuxIdMappingBuilder, Spec};
use serde_json::{Value, json};
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub use user::{ExecUser, UserError, resolve_user};

/// The file name of the runtime config inside a bundle.
pub const CONFIG_JSON: &str = "config.json";
/// The runtime-spec version written (the one umoci's template declares).
pub const OCI_VERSION: &str = "1.0.0";
/// The default hostname of the container.
pub const DEFAULT_HOSTNAME: &str = "ocix";
/// The host file bound into rootless containers for name resolution.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A failure to build or write a bundle's config.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The image config blob is not a valid OCI image config.
    #[error("image config: {0}")]
    ImageConfig(String),
    /// The image is for another OS.
    #[error("image config os is {0:?}: only linux images become runtime bundles")]
    UnsupportedOs(String),
    /// An `Env` entry without `=` or with an empty name.
    #[error("image config Env entry {entry:?}: {why}")]
    Env {
        /// The entry.
        entry: String,
        /// What is wrong.
        why: &'static str,
    },
    /// `created` is not an RFC 3339 time.
    #[error("image config created {0:?} is not an RFC 3339 date-time")]
    Created(String),
    /// The `User` could not be resolved.
    #[error(transparent)]
    User(#[from] UserError),
    /// A system call failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The runtime config could not be turned into (or out of) JSON.
    #[error("runtime config: {0}")]
    Spec(String),
    /// Writing config.json failed.
    #[error("{path}: {source}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// How the runtime config is made.
#[derive(Clone, Debug)]
pub struct BundleOptions {
    /// Write the rootless variant (as `umoci unpack --rootless`).
    pub rootless: bool,
    /// User namespace uid mappings. Empty with `rootless`: the invoking
    /// user's euid mapped to 0, size 1. Non-empty without `rootless`: a user
    /// namespace with these mappings (as umoci's `--uid-map`).
    pub uid_mappings: Vec<LinuxIdMapping>,
    /// User namespace gid mappings (as `uid_mappings`, with the egid).
    pub gid_mappings: Vec<LinuxIdMapping>,
    /// `root.path`; `None`: the rootfs's last path component (umoci writes
    /// the same, `rootfs` for `BUNDLE/rootfs`).
    pub root_path: Option<PathBuf>,
    /// The container's hostname. umoci writes `umoci-default`; ocix writes
    /// [`DEFAULT_HOSTNAME`] unless told otherwise.
    pub hostname: String,
    /// `process.terminal`; umoci always writes `true` (the bundle is for an
    /// interactive `runc run`), and so does the default here.
    pub terminal: bool,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            rootless: false,
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            root_path: None,
            hostname: DEFAULT_HOSTNAME.to_string(),
            terminal: true,
        }
    }
}

/// Parses an image config blob (`application/vnd.oci.image.config.v1+json`).
pub fn parse_image_config(json: &[u8]) -> Result<ImageConfiguration, BundleError> {
    serde_json::from_slice(json).map_err(|e| BundleError::ImageConfig(e.to_string()))
}

/// Reads and parses an image config blob from a file.
pub fn read_image_config(path: &Path) -> Result<ImageConfiguration, BundleError> {
    let bytes = std::fs::read(path).map_err(|e| BundleError::ImageConfig(format!("{}: {e}", path.display())))?;
    parse_image_config(&bytes)
}

/// A mapping of `size` ids from `container_id` to `host_id`.
pub fn id_mapping(container_id: u32, host_id: u32, size: u32) -> Result<LinuxIdMapping, BundleError> {
    LinuxIdMappingBuilder::default()
        .container_id(container_id)
        .host_id(host_id)
        .size(size)
        .build()
        .map_err(|e| BundleError::Spec(e.to_string()))
}

/// The template every config starts from (umoci's default spec).
fn template() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "inheritable": caps, "permitted": caps, "ambient": caps,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs"},
        "hostname": DEFAULT_HOSTNAME,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "annotations": {},
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": [
                "/proc/kcore", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    })
}

/// Sets `NAME=value` in `env`, replacing an entry of the same name in place.
fn set_env(env: &mut Vec<String>, name: &str, value: &str) {
    let entry = format!("{name}={value}");
    let prefix = format!("{name}=");
    match env.iter_mut().find(|e| e.starts_with(&prefix)) {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

/// Builds the runtime config for an image whose layers are unpacked at
/// `rootfs` (read only for `/etc/passwd` and `/etc/group`, safely; see
/// [`user`]).
pub fn runtime_config(image: &ImageConfiguration, rootfs: &Path, opts: &BundleOptions) -> Result<Spec, BundleError> {
    let os = enum_str(image.os())?;
    if os != "linux" {
        return Err(BundleError::UnsupportedOs(os));
    }
    let arch = enum_str(image.architecture())?;
    let cfg = image.config().clone().unwrap_or_default();
    let mut spec = template();

    spec["process"]["terminal"] = json!(opts.terminal);
    spec["hostname"] = json!(opts.hostname);
    let root_path = match &opts.root_path {
        Some(p) => p.clone(),
        None => rootfs.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("rootfs")),
    };
    spec["root"]["path"] = json!(root_path);
    if let Some(wd) = cfg.working_dir().as_deref().filter(|w| !w.is_empty()) {
        spec["process"]["cwd"] = json!(wd);
    }

    let mut env: Vec<String> =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(), "TERM=xterm".into()];
    for entry in cfg.env().iter().flatten() {
        let Some((name, value)) = entry.split_once('=') else {
            return Err(BundleError::Env { entry: entry.clone(), why: "no '='" });
        };
        if name.is_empty() {
            return Err(BundleError::Env { entry: entry.clone(), why: "empty name" });
        }
        set_env(&mut env, name, value);
    }

    let args: Vec<&String> = cfg.entrypoint().iter().flatten().chain(cfg.cmd().iter().flatten()).collect();
    if !args.is_empty() {
        spec["process"]["args"] = json!(args);
    }

    let mut ann = serde_json::Map::new();
    for (k, v) in cfg.labels().iter().flatten() {
        ann.insert(k.clone(), json!(v));
    }
    let created = match image.created() {
        Some(c) => format_created(c)?,
        None => "0001-01-01T00:00:00Z".to_string(),
    };
    ann.insert("org.opencontainers.image.os".into(), json!(os));
    ann.insert("org.opencontainers.image.architecture".into(), json!(arch));
    ann.insert("org.opencontainers.image.author".into(), json!(image.author().clone().unwrap_or_default()));
    ann.insert("org.opencontainers.image.created".into(), json!(created));
    ann.insert("org.opencontainers.image.stopSignal".into(), json!(cfg.stop_signal().clone().unwrap_or_default()));
    let mut ports: Vec<&String> = cfg.exposed_ports().iter().flatten().collect();
    ports.sort();
    ports.dedup();
    let ports: Vec<&str> = ports.iter().map(|s| s.as_str()).collect();
    ann.insert("org.opencontainers.image.exposedPorts".into(), json!(ports.join(",")));
    spec["annotations"] = Value::Object(ann);

    let who = resolve_user(rootfs, cfg.user().as_deref().unwrap_or(""))?;
    spec["process"]["user"] = json!({"uid": who.uid, "gid": who.gid});
    if !who.additional_gids.is_empty() {
        spec["process"]["user"]["additionalGids"] = json!(who.additional_gids);
    }
    if let Some(home) = who.home.as_deref().filter(|h| !h.is_empty()) {
        set_env(&mut env, "HOME", home);
    }
    spec["process"]["env"] = json!(env);

    let mut volumes: Vec<&String> = cfg.volumes().iter().flatten().collect();
    volumes.sort();
    volumes.dedup();
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for v in volumes {
            mounts.push(json!({
                "destination": v, "type": "tmpfs", "source": "none",
                "options": ["rw", "nosuid", "nodev", "noexec", "relatime"],
            }));
        }
    }

    let (mut uids, mut gids) = (opts.uid_mappings.clone(), opts.gid_mappings.clone());
    if opts.rootless && uids.is_empty() && gids.is_empty() {
        uids = vec![id_mapping(0, sys::euid(), 1)?];
        gids = vec![id_mapping(0, sys::egid(), 1)?];
    }
    if !uids.is_empty() || !gids.is_empty() {
        let linux = &mut spec["linux"];
        retain_namespaces(linux, |t| t != "user");
        push_namespace(linux, "user");
        let to_json = |m: &Vec<LinuxIdMapping>| serde_json::to_value(m).map_err(|e| BundleError::Spec(e.to_string()));
        if !uids.is_empty() {
            linux["uidMappings"] = to_json(&uids)?;
        }
        if !gids.is_empty() {
            linux["gidMappings"] = to_json(&gids)?;
        }
    }
    if opts.rootless {
        make_rootless(&mut spec, Path::new(RESOLV_CONF))?;
    }
    serde_json::from_value(spec).map_err(|e| BundleError::Spec(e.to_string()))
}

/// The JSON string form of an image-spec enum (`os`, `architecture`).
fn enum_str<T: serde::Serialize>(v: &T) -> Result<String, BundleError> {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => Ok(s),
        Ok(other) => Err(BundleError::ImageConfig(format!("unexpected value {other}"))),
        Err(e) => Err(BundleError::ImageConfig(e.to_string())),
    }
}

fn retain_namespaces(linux: &mut Value, keep: impl Fn(&str) -> bool) {
    if let Some(ns) = linux["namespaces"].as_array_mut() {
        ns.retain(|n| keep(n["type"].as_str().unwrap_or("")));
    }
}

fn push_namespace(linux: &mut Value, typ: &str) {
    match linux["namespaces"].as_array_mut() {
        Some(ns) => ns.push(json!({"type": typ})),
        None => linux["namespaces"] = json!([{"type": typ}]),
    }
}

/// Whether a mount destination is `/sys` or below it.
fn under_sys(dest: &str) -> bool {
    let rest = dest.trim_start_matches('/');
    rest == "sys" || rest.starts_with("sys/")
}

/// Turns a config into one an unprivileged user can run: no additional gids,
/// a user namespace but no network namespace, no cgroup resources, nothing
/// mounted at or below `/sys` except a read-only recursive bind of the
/// host's, no `uid=`/`gid=` mount options, and the host's resolv.conf bound
/// read-only (with the flags its mount has, which a user namespace cannot
/// drop) when the host has one.
fn make_rootless(spec: &mut Value, resolv_conf: &Path) -> Result<(), BundleError> {
    if let Some(user) = spec["process"]["user"].as_object_mut() {
        user.remove("additionalGids");
    }
    let linux = &mut spec["linux"];
    retain_namespaces(linux, |t| t != "network" && t != "user");
    push_namespace(linux, "user");
    if let Some(l) = linux.as_object_mut() {
        l.remove("resources");
    }

    let old = spec["mounts"].as_array().cloned().unwrap_or_default();
    let mut mounts = Vec::with_capacity(old.len() + 2);
    for mut m in old {
        if under_sys(m["destination"].as_str().unwrap_or("")) {
            continue;
        }
        if let Some(opts) = m["options"].as_array_mut() {
            opts.retain(|o| {
                let o = o.as_str().unwrap_or("");
                !o.starts_with("uid=") && !o.starts_with("gid=")
            });
        }
        mounts.push(m);
    }
    mounts.push(json!({
        "destination": "/sys", "type": "bind", "source": "/sys",
        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
    }));
    if let Some(mut options) = locked_mount_options(resolv_conf)? {
        options.extend(["rbind".to_string(), "ro".to_string()]);
        mounts.push(json!({
            "destination": RESOLV_CONF, "type": "bind", "source": resolv_conf, "options": options,
        }));
    }
    spec["mounts"] = Value::Array(mounts);
    Ok(())
}

/// The mount flags of the filesystem holding `path` that a bind mount made
/// inside a user namespace must keep (the kernel locks them), as mount
/// options; `None` when `path` does not exist.
pub fn locked_mount_options(path: &Path) -> Result<Option<Vec<String>>, BundleError> {
    use sys::read::StatVfsMountFlags as F;
    let st = match sys::read::statvfs_path(path) {
        Ok(st) => st,
        Err(e) if e.errno == Errno::NOENT => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let names = [
        (F::RDONLY, "ro"),
        (F::NOSUID, "nosuid"),
        (F::NODEV, "nodev"),
        (F::NOEXEC, "noexec"),
        (F::NOATIME, "noatime"),
        (F::NODIRATIME, "nodiratime"),
        (F::RELATIME, "relatime"),
    ];
    Ok(Some(names.iter().filter(|(f, _)| st.f_flag.contains(*f)).map(|(_, n)| n.to_string()).collect()))
}

/// Formats an image config `created` time the way umoci's annotation does
/// (RFC 3339 with nanoseconds, trailing zeros trimmed, `Z` for UTC).
pub fn format_created(s: &str) -> Result<String, BundleError> {
    let bad = || BundleError::Created(s.to_string());
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let n = |r: std::ops::Range<usize>| -> Result<u32, BundleError> {
        let f = &s[r];
        if f.bytes().all(|c| c.is_ascii_digit()) { f.parse().map_err(|_| bad()) } else { Err(bad()) }
    };
    let (year, month, day) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hour, min, sec) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if day == 0 || day > days || hour > 23 || min > 59 || sec > 59 {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut frac = "";
    if let Some(r) = rest.strip_prefix('.') {
        let end = r.bytes().position(|c| !c.is_ascii_digit()).unwrap_or(r.len());
        if end == 0 || end > 9 {
            return Err(bad());
        }
        frac = r[..end].trim_end_matches('0');
        rest = &r[end..];
    }
    let zone = match rest {
        "Z" => "Z".to_string(),
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && &z[3..4] == ":" => {
            if !z[1..3].bytes().chain(z[4..6].bytes()).all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            let (hh, mm): (u32, u32) = (z[1..3].parse().map_err(|_| bad())?, z[4..6].parse().map_err(|_| bad())?);
            if hh > 23 || mm > 59 {
                return Err(bad());
            }
            if hh == 0 && mm == 0 { "Z".to_string() } else { z.to_string() }
        }
        _ => return Err(bad()),
    };
    let frac = if frac.is_empty() { String::new() } else { format!(".{frac}") };
    Ok(format!("{}{frac}{zone}", &s[..19]))
}

/// The bytes of config.json for `spec`: keys sorted, capability sets sorted,
/// tab-indented, newline-terminated (as umoci indents it).
pub fn config_json(spec: &Spec) -> Result<Vec<u8>, BundleError> {
    let mut v = serde_json::to_value(spec).map_err(|e| BundleError::Spec(e.to_string()))?;
    if let Some(caps) = v["process"]["capabilities"].as_object_mut() {
        for set in caps.values_mut() {
            if let Some(a) = set.as_array_mut() {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(&v, &mut ser).map_err(|e| BundleError::Spec(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

/// Writes `BUNDLE/config.json` (mode 0644, replacing any existing one
/// atomically: written beside it, then renamed over it).
pub fn write_bundle_config(bundle: &Path, spec: &Spec) -> Result<(), BundleError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let bytes = config_json(spec)?;
    let path = bundle.join(CONFIG_JSON);
    let tmp = bundle.join(format!(".{CONFIG_JSON}.ocix-tmp"));
    let werr = |p: &Path| {
        let p = p.to_path_buf();
        move |source| BundleError::Write { path: p, source }
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(sys::O_NOFOLLOW)
        .open(&tmp)
        .map_err(werr(&tmp))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(werr(&tmp))?;
    f.write_all(&bytes).map_err(werr(&tmp))?;
    f.sync_all().map_err(werr(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(werr(&path))
}
