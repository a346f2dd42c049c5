//! Runtime bundle config.json: the image config fields umoci carries over,
//! User resolution inside the rootfs (and never outside it), the rootless
//! variant, and the bytes written.

mod common;

use ocix::bundle::{
    BundleError, BundleOptions, UserError, config_json, format_created, id_mapping, parse_image_config, resolve_user,
    runtime_config, write_bundle_config,
};
use serde_json::{Value, json};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
# a comment line
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin

alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
nohome:x:1002:1002:::/bin/sh
alice:x:9999:9999:second alice, never used:/nowhere:/bin/sh
";

const GROUP: &str = "\
root:x:0:
daemon:x:1:
wheel:x:10:alice,bob
audio:x:29:alice
staff:x:50:
alice:x:1000:
bob:x:1001:
";

/// An image config with `config` as its `config` object.
fn image(config: Value) -> Value {
    json!({
        "created": "2025-05-22T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []},
    })
}

/// A temp dir holding `rootfs/etc/{passwd,group}`.
fn rootfs_with_db() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("rootfs/etc")).unwrap();
    std::fs::write(t.path().join("rootfs/etc/passwd"), PASSWD).unwrap();
    std::fs::write(t.path().join("rootfs/etc/group"), GROUP).unwrap();
    t
}

/// The config.json (as JSON) for image config `img` over `rootfs`.
fn config_for(img: &Value, rootfs: &Path, opts: &BundleOptions) -> Result<Value, BundleError> {
    let parsed = parse_image_config(&serde_json::to_vec(img).unwrap())?;
    let spec = runtime_config(&parsed, rootfs, opts)?;
    Ok(serde_json::from_slice(&config_json(&spec)?).unwrap())
}

fn config(img: Value) -> Value {
    let t = rootfs_with_db();
    config_for(&img, &t.path().join("rootfs"), &BundleOptions::default()).unwrap()
}

fn user_of(spec: &str, rootfs: &Path) -> Result<(u32, u32, Vec<u32>, Option<String>), UserError> {
    let u = resolve_user(rootfs, spec)?;
    Ok((u.uid, u.gid, u.additional_gids, u.home))
}

#[test]
fn whole_config_matches_umoci_template() {
    let got = config(image(
        json!({"Cmd": ["bash"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}),
    ));
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let want = json!({
        "ociVersion": "1.0.0",
        "process": {
            "terminal": true,
            "user": {"uid": 0, "gid": 0},
            "args": ["bash"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "HOME=/root"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "inheritable": caps, "permitted": caps, "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "ocix",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "annotations": {
            "org.opencontainers.image.architecture": "amd64",
            "org.opencontainers.image.author": "",
            "org.opencontainers.image.created": "2025-05-22T00:00:00Z",
            "org.opencontainers.image.exposedPorts": "",
            "org.opencontainers.image.os": "linux",
            "org.opencontainers.image.stopSignal": ""
        },
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    assert_eq!(got, want, "got:\n{}", serde_json::to_string_pretty(&got).unwrap());
}

#[test]
fn args_are_entrypoint_then_cmd() {
    let args = |c: Value| config(image(c))["process"]["args"].clone();
    assert_eq!(args(json!({"Entrypoint": ["/bin/ep", "-x"], "Cmd": ["a", "b"]})), json!(["/bin/ep", "-x", "a", "b"]));
    assert_eq!(args(json!({"Cmd": ["/bin/cmd", "c"]})), json!(["/bin/cmd", "c"]));
    assert_eq!(args(json!({"Entrypoint": ["/bin/ep"]})), json!(["/bin/ep"]));
    assert_eq!(args(json!({"Entrypoint": [], "Cmd": []})), json!(["sh"]), "both empty keeps the template's sh");
    assert_eq!(args(json!({})), json!(["sh"]));
}

#[test]
fn env_merges_over_template_and_home_comes_from_passwd() {
    let c = config(image(json!({"Env": ["PATH=/only", "A=1", "B=x=y", "A=2", "EMPTY="], "User": "alice"})));
    assert_eq!(c["process"]["env"], json!(["PATH=/only", "TERM=xterm", "A=2", "B=x=y", "EMPTY=", "HOME=/home/alice"]));
    // An image HOME is replaced by the passwd entry's, as umoci does.
    let c = config(image(json!({"Env": ["HOME=/img"], "User": "bob"})));
    assert_eq!(
        c["process"]["env"],
        json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "HOME=/home/bob"])
    );
    // No passwd entry (numeric user) or an empty home: HOME left alone.
    let c = config(image(json!({"Env": ["HOME=/img"], "User": "4242"})));
    assert_eq!(c["process"]["env"][2], json!("HOME=/img"));
    let c = config(image(json!({"User": "nohome"})));
    assert!(c["process"]["env"].as_array().unwrap().iter().all(|e| !e.as_str().unwrap().starts_with("HOME=")));
}

#[test]
fn bad_env_entries_are_errors() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    for (entry, why) in [("NOEQUALS", "no '='"), ("=value", "empty name")] {
        let err = config_for(&image(json!({"Env": [entry]})), &r, &BundleOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(entry) && msg.contains(why), "{msg}");
    }
}

#[test]
fn cwd_is_working_dir_or_root() {
    assert_eq!(config(image(json!({"WorkingDir": "/srv/app"})))["process"]["cwd"], json!("/srv/app"));
    assert_eq!(config(image(json!({"WorkingDir": ""})))["process"]["cwd"], json!("/"));
    assert_eq!(config(image(json!({})))["process"]["cwd"], json!("/"));
}

#[test]
fn user_forms_resolve_against_the_rootfs_databases() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    let home = |h: &str| Some(h.to_string());
    assert_eq!(user_of("", &r).unwrap(), (0, 0, vec![], home("/root")));
    assert_eq!(user_of("alice", &r).unwrap(), (1000, 1000, vec![10, 29], home("/home/alice")), "first match wins");
    assert_eq!(user_of("1000", &r).unwrap(), (1000, 1000, vec![10, 29], home("/home/alice")));
    assert_eq!(user_of("bob", &r).unwrap(), (1001, 1001, vec![10], home("/home/bob")));
    assert_eq!(user_of("alice:staff", &r).unwrap(), (1000, 50, vec![], home("/home/alice")));
    assert_eq!(user_of("alice:50", &r).unwrap(), (1000, 50, vec![], home("/home/alice")));
    assert_eq!(user_of("1000:staff", &r).unwrap(), (1000, 50, vec![], home("/home/alice")));
    assert_eq!(user_of("1000:777", &r).unwrap(), (1000, 777, vec![], home("/home/alice")));
    assert_eq!(user_of("4242", &r).unwrap(), (4242, 0, vec![], None), "numeric ids need no entry");
    assert_eq!(user_of("4242:4343", &r).unwrap(), (4242, 4343, vec![], None));
    assert_eq!(user_of("4242:audio", &r).unwrap(), (4242, 29, vec![], None));
    assert_eq!(user_of(":staff", &r).unwrap(), (0, 50, vec![], home("/root")));
    assert_eq!(user_of("daemon", &r).unwrap(), (1, 1, vec![], home("/usr/sbin")));

    let c = config(image(json!({"User": "alice"})));
    assert_eq!(c["process"]["user"], json!({"uid": 1000, "gid": 1000, "additionalGids": [10, 29]}));
    let c = config(image(json!({"User": "1000:staff"})));
    assert_eq!(c["process"]["user"], json!({"uid": 1000, "gid": 50}));
}

#[test]
fn unknown_names_and_bad_ids_are_clear_errors() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    for (spec, needle) in [
        ("mallory", "no user \"mallory\""),
        ("alice:nogroup", "no group \"nogroup\""),
        ("2147483648", "outside"),
        ("-1", "outside"),
        ("0:99999999999", "outside"),
    ] {
        let msg = user_of(spec, &r).unwrap_err().to_string();
        assert!(msg.contains(needle) && msg.contains(spec), "{spec}: {msg}");
    }
    let err = config_for(&image(json!({"User": "mallory"})), &r, &BundleOptions::default()).unwrap_err();
    assert!(matches!(err, BundleError::User(_)), "{err}");

    // A matching line with a broken id field is reported, not read as 0.
    std::fs::write(r.join("etc/passwd"), "eve:x:notanumber:0::/:/bin/sh\n").unwrap();
    let msg = user_of("eve", &r).unwrap_err().to_string();
    assert!(msg.contains("etc/passwd") && msg.contains("line 1") && msg.contains("notanumber"), "{msg}");
}

#[test]
fn without_databases_only_numeric_ids_work() {
    let t = tempfile::tempdir().unwrap();
    assert_eq!(user_of("", t.path()).unwrap(), (0, 0, vec![], None));
    assert_eq!(user_of("12:34", t.path()).unwrap(), (12, 34, vec![], None));
    let msg = user_of("alice", t.path()).unwrap_err().to_string();
    assert!(msg.contains("no /etc/passwd"), "{msg}");
    let msg = user_of("0:staff", t.path()).unwrap_err().to_string();
    assert!(msg.contains("no /etc/group"), "{msg}");
    // etc is a file: the databases do not exist.
    std::fs::write(t.path().join("etc"), "").unwrap();
    assert_eq!(user_of("7", t.path()).unwrap(), (7, 0, vec![], None));
}

/// `TMP/outside/passwd` and `TMP/outside/group` with alice as 6666 and
/// root's home `/sentinel`:
/// the sentinel a resolution that escaped the rootfs would find.
fn sentinel(t: &Path) -> std::path::PathBuf {
    let o = t.join("outside");
    std::fs::create_dir_all(&o).unwrap();
    std::fs::write(o.join("passwd"), "root:x:0:6666::/sentinel:/bin/sh\nalice:x:6666:6666::/sentinel:/bin/sh\n")
        .unwrap();
    std::fs::write(o.join("group"), "staff:x:6666:\nwheel:x:6667:alice\n").unwrap();
    o
}

#[test]
fn absolute_symlink_out_of_the_rootfs_resolves_inside_it() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    let outside = sentinel(t.path());
    std::fs::remove_file(r.join("etc/passwd")).unwrap();
    std::fs::remove_file(r.join("etc/group")).unwrap();
    symlink(outside.join("passwd"), r.join("etc/passwd")).unwrap();
    symlink(outside.join("group"), r.join("etc/group")).unwrap();

    // Inside the rootfs that absolute path does not exist: no databases.
    assert_eq!(user_of("", &r).unwrap(), (0, 0, vec![], None), "the outside passwd was read");
    assert!(user_of("alice", &r).unwrap_err().to_string().contains("no user"));
    assert!(user_of("0:staff", &r).unwrap_err().to_string().contains("no group"));

    // Put the same path inside the rootfs: that copy is the one used.
    let inner = r.join(outside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(inner.join("passwd"), "alice:x:7777:7777::/inside:/bin/sh\n").unwrap();
    std::fs::write(inner.join("group"), "staff:x:7778:\n").unwrap();
    assert_eq!(user_of("alice:staff", &r).unwrap(), (7777, 7778, vec![], Some("/inside".into())));
}

#[test]
fn dotdot_symlinks_stop_at_the_rootfs() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    sentinel(t.path());
    std::fs::remove_file(r.join("etc/passwd")).unwrap();
    // From rootfs/etc, one `..` reaches the rootfs and a second would leave
    // it for TMP, where the sentinel is.
    symlink("../../outside/passwd", r.join("etc/passwd")).unwrap();
    assert!(user_of("alice", &r).unwrap_err().to_string().contains("no user"), "escaped through ..");
    assert_eq!(user_of("", &r).unwrap(), (0, 0, vec![], None));
    std::fs::create_dir_all(r.join("outside")).unwrap();
    std::fs::write(r.join("outside/passwd"), "alice:x:7777:7777::/inside:/bin/sh\n").unwrap();
    assert_eq!(user_of("alice", &r).unwrap().0, 7777);
}

#[test]
fn symlinked_etc_directory_resolves_inside() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    let outside = sentinel(t.path());
    std::fs::rename(r.join("etc"), r.join("real-etc")).unwrap();
    // An absolute link to the outside dir: inside the rootfs it is missing.
    symlink(&outside, r.join("etc")).unwrap();
    assert_eq!(user_of("", &r).unwrap(), (0, 0, vec![], None));
    // A chain: etc -> /lnk -> real-etc (absolute, relative to the rootfs).
    std::fs::remove_file(r.join("etc")).unwrap();
    symlink("/lnk", r.join("etc")).unwrap();
    symlink("./real-etc/../real-etc", r.join("lnk")).unwrap();
    assert_eq!(user_of("alice", &r).unwrap().0, 1000);
}

#[test]
fn loops_fifos_and_directories_are_refused_without_hanging() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    std::fs::remove_file(r.join("etc/passwd")).unwrap();
    symlink("passwd", r.join("etc/passwd")).unwrap();
    let msg = user_of("alice", &r).unwrap_err().to_string();
    assert!(msg.contains("symlinks") && msg.contains("etc/passwd"), "{msg}");

    std::fs::remove_file(r.join("etc/passwd")).unwrap();
    let fifo = std::process::Command::new("mkfifo").arg(r.join("etc/passwd")).status().unwrap();
    assert!(fifo.success());
    let msg = user_of("alice", &r).unwrap_err().to_string();
    assert!(msg.contains("not a regular file"), "{msg}");

    std::fs::remove_file(r.join("etc/passwd")).unwrap();
    std::fs::create_dir(r.join("etc/passwd")).unwrap();
    let msg = user_of("alice", &r).unwrap_err().to_string();
    assert!(msg.contains("not a regular file") || msg.contains("directory"), "{msg}");

    // A link that resolves to the rootfs itself.
    std::fs::remove_dir(r.join("etc/passwd")).unwrap();
    symlink("/", r.join("etc/passwd")).unwrap();
    assert!(user_of("alice", &r).unwrap_err().to_string().contains("directory"));
}

#[test]
fn oversized_database_is_refused() {
    let t = rootfs_with_db();
    let r = t.path().join("rootfs");
    let f = std::fs::File::create(r.join("etc/group")).unwrap();
    f.set_len(ocix::bundle::user::MAX_DB_BYTES + 1).unwrap();
    let msg = user_of("alice", &r).unwrap_err().to_string();
    assert!(msg.contains("larger than"), "{msg}");
}

#[test]
fn labels_ports_volumes_and_image_fields_become_annotations_and_mounts() {
    let mut img = image(json!({
        "Labels": {"com.example.a": "1", "org.opencontainers.image.os": "overridden"},
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "443/tcp": {}},
        "Volumes": {"/var/lib/b": {}, "/data": {}},
        "StopSignal": "SIGTERM",
    }));
    img["author"] = json!("Someone <s@example.com>");
    img["created"] = json!("2024-02-29T12:34:56.120000000+02:00");
    let c = config(img);
    let a = &c["annotations"];
    assert_eq!(a["com.example.a"], json!("1"));
    assert_eq!(a["org.opencontainers.image.os"], json!("linux"), "image fields win over labels");
    assert_eq!(a["org.opencontainers.image.exposedPorts"], json!("443/tcp,53/udp,8080/tcp"));
    assert_eq!(a["org.opencontainers.image.stopSignal"], json!("SIGTERM"));
    assert_eq!(a["org.opencontainers.image.author"], json!("Someone <s@example.com>"));
    assert_eq!(a["org.opencontainers.image.created"], json!("2024-02-29T12:34:56.12+02:00"));
    let mounts = c["mounts"].as_array().unwrap();
    let tail: Vec<&Value> = mounts[7..].iter().collect();
    let vol = |d: &str| json!({"destination": d, "type": "tmpfs", "source": "none", "options": ["rw", "nosuid", "nodev", "noexec", "relatime"]});
    assert_eq!(tail, vec![&vol("/data"), &vol("/var/lib/b")]);
}

#[test]
fn created_is_formatted_like_umoci_and_validated() {
    assert_eq!(format_created("2025-05-22T00:00:00Z").unwrap(), "2025-05-22T00:00:00Z");
    assert_eq!(format_created("2025-05-22T00:00:00.000Z").unwrap(), "2025-05-22T00:00:00Z");
    assert_eq!(format_created("2025-05-22T00:00:00.5Z").unwrap(), "2025-05-22T00:00:00.5Z");
    assert_eq!(format_created("2025-05-22T00:00:00.123456789-07:30").unwrap(), "2025-05-22T00:00:00.123456789-07:30");
    assert_eq!(format_created("2025-05-22T00:00:00+00:00").unwrap(), "2025-05-22T00:00:00Z");
    for bad in [
        "",
        "2025-05-22",
        "2025-02-29T00:00:00Z",
        "2025-13-01T00:00:00Z",
        "2025-05-22T24:00:00Z",
        "2025-05-22T00:00:00",
        "2025-05-22T00:00:00.Z",
        "2025-05-22T00:00:00.1234567890Z",
        "2025-05-22T00:00:00+0200",
        "2025-05-22 00:00:00Z",
        "２０２５-05-22T00:00:00Z",
    ] {
        assert!(format_created(bad).is_err(), "{bad:?} accepted");
    }
    let t = rootfs_with_db();
    let mut img = image(json!({}));
    img["created"] = json!("yesterday");
    let err = config_for(&img, &t.path().join("rootfs"), &BundleOptions::default()).unwrap_err();
    assert!(err.to_string().contains("yesterday"), "{err}");
}

#[test]
fn non_linux_images_are_refused() {
    let t = rootfs_with_db();
    let mut img = image(json!({}));
    img["os"] = json!("windows");
    let err = config_for(&img, &t.path().join("rootfs"), &BundleOptions::default()).unwrap_err();
    assert!(matches!(err, BundleError::UnsupportedOs(ref os) if os == "windows"), "{err}");
}

#[test]
fn options_set_root_path_hostname_and_terminal() {
    let t = rootfs_with_db();
    let opts = BundleOptions {
        root_path: Some("/abs/rootfs".into()),
        hostname: "box".into(),
        terminal: false,
        ..Default::default()
    };
    let c = config_for(&image(json!({})), &t.path().join("rootfs"), &opts).unwrap();
    assert_eq!(c["root"], json!({"path": "/abs/rootfs"}));
    assert_eq!(c["hostname"], json!("box"));
    assert_eq!(c["process"]["terminal"], json!(false));
}

fn ns_types(c: &Value) -> Vec<String> {
    c["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap().to_string()).collect()
}

#[test]
fn rootless_variant_needs_no_privilege() {
    let t = rootfs_with_db();
    let opts = BundleOptions {
        rootless: true,
        uid_mappings: vec![id_mapping(0, 1234, 1).unwrap()],
        gid_mappings: vec![id_mapping(0, 5678, 1).unwrap()],
        ..Default::default()
    };
    let img = image(json!({"User": "alice", "Volumes": {"/sys/kernel/x": {}, "/system": {}}}));
    let c = config_for(&img, &t.path().join("rootfs"), &opts).unwrap();
    assert_eq!(c["linux"]["uidMappings"], json!([{"containerID": 0, "hostID": 1234, "size": 1}]));
    assert_eq!(c["linux"]["gidMappings"], json!([{"containerID": 0, "hostID": 5678, "size": 1}]));
    assert_eq!(ns_types(&c), ["pid", "ipc", "uts", "mount", "user"]);
    assert!(c["linux"].get("resources").is_none(), "cgroup resources need privilege");
    assert_eq!(c["process"]["user"], json!({"uid": 1000, "gid": 1000}), "additional gids dropped");

    let mounts = c["mounts"].as_array().unwrap();
    let dests: Vec<&str> = mounts.iter().map(|m| m["destination"].as_str().unwrap()).collect();
    let mut want = vec!["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/system", "/sys"];
    if Path::new("/etc/resolv.conf").exists() {
        want.push("/etc/resolv.conf");
    }
    assert_eq!(dests, want, "nothing below /sys but the bind; /system is not below /sys");
    for m in mounts {
        for o in m["options"].as_array().into_iter().flatten() {
            let o = o.as_str().unwrap();
            assert!(!o.starts_with("gid=") && !o.starts_with("uid="), "{m}");
        }
    }
    assert_eq!(
        mounts[6],
        json!({"destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]})
    );
    if let Some(rc) = mounts.get(7) {
        assert_eq!(rc["type"], json!("bind"));
        assert_eq!(rc["source"], json!("/etc/resolv.conf"));
        let o: Vec<&str> = rc["options"].as_array().unwrap().iter().map(|o| o.as_str().unwrap()).collect();
        assert_eq!(o[o.len() - 2..], ["rbind", "ro"]);
        let locked = ocix::bundle::locked_mount_options(Path::new("/etc/resolv.conf")).unwrap().unwrap();
        assert_eq!(o[..o.len() - 2], locked[..]);
    }
}

#[test]
fn rootless_without_maps_maps_the_invoking_user() {
    let t = rootfs_with_db();
    let opts = BundleOptions { rootless: true, ..Default::default() };
    let c = config_for(&image(json!({})), &t.path().join("rootfs"), &opts).unwrap();
    let (uid, gid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
    assert_eq!(c["linux"]["uidMappings"], json!([{"containerID": 0, "hostID": uid, "size": 1}]));
    assert_eq!(c["linux"]["gidMappings"], json!([{"containerID": 0, "hostID": gid, "size": 1}]));
}

#[test]
fn maps_without_rootless_add_a_user_namespace_only() {
    let t = rootfs_with_db();
    let opts = BundleOptions {
        uid_mappings: vec![id_mapping(0, 100000, 65536).unwrap()],
        gid_mappings: vec![id_mapping(0, 100000, 65536).unwrap()],
        ..Default::default()
    };
    let c = config_for(&image(json!({"User": "alice"})), &t.path().join("rootfs"), &opts).unwrap();
    assert_eq!(ns_types(&c), ["pid", "network", "ipc", "uts", "mount", "user"]);
    assert_eq!(c["linux"]["uidMappings"], json!([{"containerID": 0, "hostID": 100000, "size": 65536}]));
    assert!(c["linux"]["resources"].is_object());
    assert_eq!(c["process"]["user"]["additionalGids"], json!([10, 29]));
    assert_eq!(c["mounts"][5]["type"], json!("sysfs"));
}

#[test]
fn written_config_is_0644_tab_indented_and_reads_back() {
    let t = rootfs_with_db();
    let img = parse_image_config(
        &serde_json::to_vec(&image(json!({"User": "alice", "Labels": {"z": "1", "a": "2"}}))).unwrap(),
    )
    .unwrap();
    let spec = runtime_config(&img, &t.path().join("rootfs"), &BundleOptions::default()).unwrap();
    let b = t.path().join("bundle");
    std::fs::create_dir(&b).unwrap();
    std::fs::write(b.join("config.json"), "old").unwrap();
    std::fs::set_permissions(b.join("config.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
    write_bundle_config(&b, &spec).unwrap();
    let path = b.join("config.json");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o644);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"{\n\t\"annotations\": {\n\t\t\"a\": \"2\",\n"), "{}", String::from_utf8_lossy(&bytes));
    assert!(bytes.ends_with(b"}\n"));
    let back = oci_spec::runtime::Spec::load(&path).unwrap();
    assert_eq!(back, spec);
    // Deterministic: the same spec gives the same bytes (capability sets
    // are hash sets inside the spec type).
    for _ in 0..5 {
        assert_eq!(config_json(&spec).unwrap(), bytes);
    }
    let names: Vec<_> = std::fs::read_dir(&b).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["config.json"], "no temp file left behind");
}

#[test]
fn corpus_image_config_matches_umoci_output() {
    // The shared corpus (when built) holds umoci's own config.json for its
    // image; ocix must agree on everything but the deliberate differences.
    let needs = ["bundle-umoci/config.json", "image/index.json", "rootfs-reference"];
    let Some(corpus) = common::corpus("corpus_image_config_matches_umoci_output", &needs) else { return };
    let umoci = std::fs::read(corpus.join("bundle-umoci/config.json")).unwrap();
    let layout = corpus.join("image");
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "debian")
        .unwrap();
    let manifest: Value = serde_json::from_slice(&blob(m["digest"].as_str().unwrap())).unwrap();
    let img = parse_image_config(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let rootfs = corpus.join("rootfs-reference");
    let opts =
        BundleOptions { hostname: "umoci-default".into(), root_path: Some(rootfs.clone()), ..Default::default() };
    let ours: Value =
        serde_json::from_slice(&config_json(&runtime_config(&img, &rootfs, &opts).unwrap()).unwrap()).unwrap();
    let theirs: Value = serde_json::from_slice(&umoci).unwrap();
    assert_eq!(ours, theirs);
}
