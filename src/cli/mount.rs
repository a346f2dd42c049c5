//! `ocix mount M --store S MNT`: a manifest as a mounted tree, no file data
//! copied; `ocix umount MNT`.

use super::Global;
use crate::manifest::{Compact, Digest};
use crate::mount::{MountOptions, mount, umount_any};
use crate::pipeline::{self, LazyMountOptions};
use crate::remote::PullOptions;
use crate::store::Store;
use anyhow::{Context as _, bail};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Mount MANIFEST at MNT as an overlay whose files read their blobs from
/// --store directly: no file data is copied, and the page cache of a blob
/// is shared by every mount naming it. The tree's metadata becomes an EROFS
/// image, made once per manifest and cached in STORE/.ocix-mount/. Every
/// blob must be present with the right size before anything is mounted;
/// digests are checked once and remembered (--verify checks them again).
/// Read-only unless --upper and --work are given. Needs root, Linux 6.12
/// or later (EROFS image files, overlay data-only layers) and a store on a
/// disk filesystem (the kernel cannot mount an image file on tmpfs);
/// `ocix unpack` writes the tree out instead.
///
/// MANIFEST may be docker://HOST/REPO:TAG, an artifact `ocix push` made:
/// a lazy mount. Only the manifest (or the artifact's lazy index) is
/// fetched before mounting; each file's blob is fetched into --store when
/// the file is first opened (with missing pack neighbours: 16 KiB of them,
/// twice as many each time reads go on in pack order, up to 256 KiB; only
/// those the artifact's access list names, if it has one), verified before
/// a byte is served. The blobs an access list names are fetched at once
/// after mounting, even with --no-background. A fetch that fails is EIO to
/// the reader and a line in the log; the next read retries. A daemon serves the mount (log in
/// STORE/.ocix-mount/lazy/) until `ocix umount MNT`, fetching the rest
/// meanwhile unless --no-background; --foreground serves from this process.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The manifest, or docker://HOST[:PORT]/REPO:TAG for a lazy mount.
    pub manifest: PathBuf,
    /// The blob store holding the manifest's file contents.
    #[arg(long)]
    pub store: PathBuf,
    /// Where to mount (an existing directory).
    pub target: PathBuf,
    /// Make the mount writable: changes go into this directory.
    #[arg(long, requires = "work")]
    pub upper: Option<PathBuf>,
    /// overlay's work directory: empty, on the same filesystem as --upper.
    #[arg(long, requires = "upper")]
    pub work: Option<PathBuf>,
    /// Hash every blob again, even those an earlier mount checked.
    #[arg(long)]
    pub verify: bool,
    /// docker:// only: fetch blobs only when read (no background prefetch
    /// of the rest).
    #[arg(long)]
    pub no_background: bool,
    /// docker:// only: write the paths of the files read, in first-access
    /// order, one a line, to FILE while the mount lives (for `ocix push
    /// --prefetch`).
    #[arg(long, value_name = "FILE")]
    pub record_access: Option<PathBuf>,
    /// docker:// only: serve the mount from this process until it is
    /// unmounted, instead of a daemon.
    #[arg(long)]
    pub foreground: bool,
    /// docker:// only: blobs fetched at once by the background prefetch.
    #[arg(long, short = 'j', default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Connection flags (docker:// only).
    #[command(flatten)]
    pub conn: super::pull::ConnArgs,
    /// Set by the daemon's parent: tell it on standard output once mounted.
    #[arg(long, hide = true)]
    pub daemon_notify: bool,
    /// Set for a bundle, which keeps the manifest: fetch it before
    /// mounting even when the artifact has a lazy index.
    #[arg(long, hide = true)]
    pub full_manifest: bool,
}

/// Unmount a tree `ocix mount` made (anything else mounted there is left
/// alone).
#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    /// The mount point.
    pub target: PathBuf,
}

/// Runs `ocix mount`.
pub fn run(a: Args, g: Global) -> anyhow::Result<ExitCode> {
    if let Some(src) = a.manifest.to_str().filter(|s| s.starts_with("docker://")) {
        let src = src.to_string();
        if a.foreground {
            return run_lazy(&src, &a, g);
        }
        let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
        args.extend(["--foreground".into(), "--daemon-notify".into()]);
        spawn_daemon(args, &a.store, &a.target, g)?;
        return Ok(ExitCode::SUCCESS);
    }
    let bytes = super::read_input(&a.manifest)?;
    let m = Compact::from_bytes(&bytes).with_context(|| format!("{}: invalid OCIX manifest", a.manifest.display()))?;
    let store = Store::open(&a.store)?;
    let opts = MountOptions { upper: a.upper.clone(), work: a.work.clone(), verify: a.verify };
    let r = mount(&m, &Digest::of(&bytes), &store, &a.target, &opts)
        .map_err(super::mount_failed)
        .with_context(|| format!("mounting {} at {}", a.manifest.display(), a.target.display()))?;
    g.info(&format!(
        "{} mounted at {} ({}, image {} {} in {} ms; {} blobs, {} hashed)",
        a.manifest.display(),
        a.target.display(),
        if a.upper.is_some() { "writable" } else { "read-only" },
        r.image.display(),
        if r.image_written { "written" } else { "cached" },
        r.image_time.as_millis(),
        r.blobs,
        r.blobs_hashed
    ));
    Ok(ExitCode::SUCCESS)
}

/// Runs `ocix umount`: for a lazy mount, also waits for the process that
/// served it to end.
pub fn run_umount(a: UmountArgs, g: Global) -> anyhow::Result<ExitCode> {
    if let Some(pid) = umount_any(&a.target).map_err(super::mount_failed)? {
        wait_daemon(pid, g);
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a lazy mount's daemons keep their logs and state.
fn lazy_dir(store: &Path) -> PathBuf {
    store.join(crate::mount::CACHE_DIR).join("lazy")
}

/// Waits (10 s at most) for the daemon of an unmounted lazy mount to end
/// its session and exit; one that does not is sent SIGTERM.
fn wait_daemon(pid: u32, g: Global) {
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')))
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if alive() {
        g.warn(&format!("the lazy mount's process {pid} did not end: sending it SIGTERM"));
        if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
        }
    }
}

/// Starts this command again as a daemon (`--foreground --daemon-notify`,
/// its own process group, standard error into a log under
/// `STORE/.ocix-mount/lazy/`) and returns once it says it has mounted, or
/// fails with what it logged.
fn spawn_daemon(args: Vec<OsString>, store: &Path, target: &Path, g: Global) -> anyhow::Result<(u32, Digest)> {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let dir = lazy_dir(store);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let log = dir.join(format!("mount-{secs}-{}.log", std::process::id()));
    let err = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let exe = std::env::current_exe().context("finding the ocix executable")?;
    let mut child = std::process::Command::new(exe)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufReader::new(out).read_line(&mut line);
    }
    let said: Vec<&str> = line.split_whitespace().collect();
    if let ["ready", pid, digest] = said[..]
        && let (Ok(pid), Ok(digest)) = (pid.parse::<u32>(), Digest::parse(digest))
    {
        g.info(&format!("{} mounted lazily; daemon {pid} (log {})", target.display(), log.display()));
        return Ok((pid, digest));
    }
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    // the daemon's own error, else the end of its log
    let errors: Vec<&str> = logged.lines().filter_map(|l| l.strip_prefix("ocix: error: ")).collect();
    let why: Vec<&str> = logged.lines().filter(|l| !l.trim().is_empty()).collect();
    let why = if errors.is_empty() { why[why.len().saturating_sub(5)..].join("\n") } else { errors.join("\n") };
    bail!("mounting at {}: {}", target.display(), if why.is_empty() { "the mount daemon failed" } else { &why })
}

/// One line of a lazy mount's log, with the time.
fn log_line(line: &str) {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    eprintln!("[{}.{:03}] {line}", t.as_secs(), t.subsec_millis());
}

/// `ocix mount docker://... MNT --foreground`: mounts, then serves until
/// unmounted.
fn run_lazy(src: &str, a: &Args, g: Global) -> anyhow::Result<ExitCode> {
    let opts = LazyMountOptions {
        pull: PullOptions { remote: a.conn.options(), ..PullOptions::default() },
        store: a.store.clone(),
        background: (!a.no_background).then_some(a.jobs.max(1)),
        record_access: a.record_access.clone(),
        threads: 4,
        mount: MountOptions { upper: a.upper.clone(), work: a.work.clone(), verify: false },
        log: Box::new(log_line),
        full_manifest: a.full_manifest,
    };
    let notify = a.daemon_notify;
    let target = a.target.clone();
    let ended = pipeline::lazy_mount(src, &a.target, opts, |m| {
        log_line(&format!(
            "{src} (manifest {}, {} blobs) mounted at {} in {} ms (image {} in {} ms)",
            m.manifest_digest,
            m.mount.blobs,
            target.display(),
            m.mount.time.as_millis(),
            if m.mount.image_written { "written" } else { "cached" },
            m.mount.image_time.as_millis()
        ));
        if notify {
            println!("ready {} {}", std::process::id(), m.manifest_digest);
        } else {
            g.info(&format!("{src} mounted at {}; serving until unmounted", target.display()));
        }
    });
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            log_line(&format!("error: {e}"));
            return Err(super::unpack::run_failed(e, false));
        }
    };
    log_line(&format!(
        "unmounted: {} blobs fetched ({} bytes); the store {} every blob",
        ended.fetched,
        ended.bytes,
        if ended.complete { "holds" } else { "does not hold" }
    ));
    Ok(ExitCode::SUCCESS)
}

/// `ocix unpack --image docker://... BUNDLE --mount --lazy`: BUNDLE/rootfs
/// a lazy mount (a daemon, see [`spawn_daemon`]) writable into
/// BUNDLE/upper, BUNDLE/ocix.cbor the manifest, BUNDLE/config.json the
/// runtime config of an image config that says nothing but this machine's
/// platform (an ocix artifact carries no image config). BUNDLE must be
/// absent or empty; one this run created is removed on failure.
pub fn lazy_bundle(image: &str, bundle: &Path, a: &super::unpack::Args, g: Global) -> anyhow::Result<ExitCode> {
    if !image.starts_with("docker://") {
        bail!("--lazy needs --image docker://HOST/REPO:TAG (an ocix artifact pushed by `ocix push`)");
    }
    let existed = bundle.exists();
    if existed && std::fs::read_dir(bundle).with_context(|| format!("reading {}", bundle.display()))?.next().is_some() {
        bail!("{}: not empty (a bundle is unpacked fresh)", bundle.display());
    }
    let store = a.store.clone().unwrap_or_else(|| bundle.join("store"));
    let rootfs = bundle.join("rootfs");
    let result = (|| -> anyhow::Result<()> {
        let (upper, work) = (bundle.join("upper"), bundle.join("work"));
        for d in [bundle, &rootfs, &upper, &work] {
            if !d.is_dir() {
                std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
            }
        }
        Store::create(&store)?;
        let mut args: Vec<OsString> = vec!["mount".into(), image.into(), rootfs.clone().into()];
        for (flag, v) in [("--store", &store), ("--upper", &upper), ("--work", &work)] {
            args.extend([flag.into(), v.clone().into()]);
        }
        if a.no_background {
            args.push("--no-background".into());
        }
        let conn = &a.net.conn;
        if conn.insecure {
            args.push("--insecure".into());
        }
        args.extend(["--timeout".into(), conn.timeout.to_string().into()]);
        args.extend(["--retries".into(), conn.retries.to_string().into()]);
        if let Some(f) = &conn.authfile {
            args.extend(["--authfile".into(), f.clone().into()]);
        }
        // the bundle keeps the manifest (BUNDLE/ocix.cbor) from the start
        args.extend(["--foreground".into(), "--daemon-notify".into(), "--full-manifest".into()]);
        let (_, digest) = spawn_daemon(args, &store, &rootfs, g)?;
        let written = (|| -> anyhow::Result<()> {
            let bytes = std::fs::read(Store::open(&store)?.blob_path(&digest))?;
            std::fs::write(bundle.join("ocix.cbor"), &bytes)?;
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let config = serde_json::json!({
                "architecture": arch,
                "os": "linux",
                "config": {
                    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                    "Cmd": ["sh"],
                },
                "rootfs": {"type": "layers", "diff_ids": []},
            });
            let config = crate::bundle::parse_image_config(config.to_string().as_bytes())?;
            let spec = crate::bundle::runtime_config(&config, &rootfs, &crate::bundle::BundleOptions::default())?;
            crate::bundle::write_bundle_config(bundle, &spec)?;
            Ok(())
        })();
        if written.is_err() {
            let _ = umount_any(&rootfs).map(|pid| pid.map(|p| wait_daemon(p, g)));
        }
        written
    })();
    if result.is_err() && !existed {
        let _ = std::fs::remove_dir_all(bundle);
    }
    result.with_context(|| format!("unpacking {image} lazily into {}", bundle.display()))?;
    Ok(ExitCode::SUCCESS)
}
