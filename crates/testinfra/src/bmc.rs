//! A simulated BMC for a namespaced test host: Debian's `ipmi_sim` (OpenIPMI) on the
//! cluster's bridge address, whose chassis power is a script: "power off" kills every
//! process of the host's network namespace but the one holding it (the host is dead:
//! agent, libvirtd, sanlock, QEMU), "power on" only records the state (the test host is
//! not booted again). `fence_ipmilan` reaches it from the other hosts as it would a
//! real BMC (IPMI over LAN, lanplus with cipher suite 3: ipmi_sim does not answer Get
//! Channel Cipher Suites, so without `cipher=3` each call waits ~10 s).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;

/// A running simulated BMC.
pub struct Bmc {
    pub address: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Bmc {
    /// The power state the chassis script keeps: `on` or `off`.
    pub fn power(&self) -> String {
        fs::read_to_string(self.dir.join("power.state"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// What the script was asked (one line per call).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("chassis.log")).unwrap_or_default()
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Starts host i's BMC on the bridge address, UDP port 9623 + i.
    pub fn start_bmc(&self, i: usize) -> Bmc {
        let h = &self.hosts[i];
        let dir = h.dir.join("bmc");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("state")).expect("bmc dir");
        let address = self.bridge_ip();
        let port = 9623 + i as u16;
        // IPMI passwords are at most 16 bytes (20 with lanplus).
        let password = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        let holder = self.holder_pid(i).expect("host holder");
        let script = dir.join("chassis.sh");
        fs::write(
            &script,
            format!(
                r#"#!/bin/sh
# ipmi_sim's chassis_control: "<dev> get power" prints power:1|0; "<dev> set power 0|1".
D={d}
echo "$*" >> $D/chassis.log
[ -f $D/power.state ] || echo on > $D/power.state
op=$2; shift 2
case $op in
get)
  for p in "$@"; do
    case $p in
    power) if [ "$(cat $D/power.state)" = on ]; then echo power:1; else echo power:0; fi ;;
    *) echo "power:1" ;;
    esac
  done ;;
set)
  while [ $# -ge 2 ]; do
    p=$1; v=$2; shift 2
    case $p in
    power)
      if [ "$v" = 0 ]; then
        for pid in $(ip netns pids {ns}); do
          [ "$pid" = {holder} ] || kill -9 "$pid" 2>/dev/null
        done
        echo off > $D/power.state
      else
        echo on > $D/power.state
      fi ;;
    reset) echo on > $D/power.state ;;
    *) ;;
    esac
  done ;;
*) exit 1 ;;
esac
exit 0
"#,
                d = dir.display(),
                ns = h.netns,
            ),
        )
        .expect("chassis script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o700)).expect("mode");
        fs::write(
            dir.join("lan.conf"),
            format!(
                "name \"hlbmc{i}\"\nset_working_mc 0x20\n  startlan 1\n    addr {address} {port}\n    priv_limit admin\n    allowed_auths_callback none md5 straight\n    allowed_auths_user none md5 straight\n    allowed_auths_operator none md5 straight\n    allowed_auths_admin none md5 straight\n    guid a123456789abcdefa123456789abcd0{i}\n  endlan\n  chassis_control \"{s} 0x20\"\n  user 2 true \"admin\" \"{password}\" admin 10 none md5 straight\n",
                s = script.display(),
            ),
        )
        .expect("lan.conf");
        fs::write(
            dir.join("bmc.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
        )
        .expect("bmc.emu");
        let out = fs::File::create(dir.join("ipmi_sim.out")).expect("log");
        let child = Command::new("setsid")
            .arg("ipmi_sim")
            .arg("-c")
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("bmc.emu"))
            .arg("-s")
            .arg(dir.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("ipmi_sim (Debian's openipmi)");
        let bmc = Bmc {
            address,
            port,
            username: "admin".into(),
            password,
            dir,
            child: Some(child),
        };
        // Listening once ipmitool gets an answer.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = Command::new("ipmitool")
                .args(["-I", "lanplus", "-C", "3", "-H", &bmc.address, "-p"])
                .arg(bmc.port.to_string())
                .args([
                    "-U",
                    &bmc.username,
                    "-P",
                    &bmc.password,
                    "-N",
                    "1",
                    "-R",
                    "1",
                ])
                .args(["chassis", "power", "status"])
                .output();
            if st.is_ok_and(|o| o.status.success()) {
                break;
            }
            assert!(Instant::now() < deadline, "ipmi_sim did not answer");
            std::thread::sleep(Duration::from_millis(200));
        }
        bmc
    }
}
