//! The kubectl-style verbs against a real control plane: `tandem control-plane` runs as a child
//! process (its controllers included; no agents, so pools never come ONLINE unless a test
//! applies them so), and each verb runs as `tandem --server ADDR ...`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// How long a test waits for the controllers or a process before failing.
const PATIENCE: Duration = Duration::from_secs(30);

/// A control plane in its own data directory, killed when dropped.
struct ControlPlane {
    child: Child,
    _stdout: ChildStdout,
    address: String,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts one; `agent_timeout` is how long before pools with no agent go OFFLINE.
    fn start(agent_timeout: &str) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(TANDEM)
            .args([
                "control-plane",
                "--listen",
                "127.0.0.1:0",
                "--agent-timeout",
            ])
            .arg(agent_timeout)
            .arg("--data-dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tandem control-plane");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read the address line");
        let address = line
            .trim()
            .strip_prefix("control plane listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        ControlPlane {
            child,
            _stdout: stdout.into_inner(),
            address,
            dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(TANDEM);
        command
            .args(args)
            .arg("--server")
            .arg(&self.address)
            // Where the admin credential the control plane made at its first start is (for
            // this command and any it runs, such as an editor script).
            .env("TANDEM_DATA_DIR", self.dir.path())
            .env_remove("TANDEM_SERVER")
            .env_remove("KUBE_EDITOR")
            .env_remove("EDITOR");
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::of(self.command(args).output().expect("run tandem"))
    }

    fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tandem");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Run::of(child.wait_with_output().unwrap())
    }

    /// Writes `text` to a file in the data directory and returns its path.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn apply(&self, name: &str, text: &str) -> Run {
        let path = self.file(name, text);
        self.run(&["apply", "-f", path.to_str().unwrap()])
    }

    /// Runs `args` until `done` holds for its result, or fails after [`PATIENCE`].
    fn wait_for(&self, args: &[&str], what: &str, done: impl Fn(&Run) -> bool) -> Run {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let run = self.run(args);
            if done(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last `tandem {}`: {run:?}",
                args.join(" ")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A finished `tandem` command.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(output: Output) -> Run {
        Run {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert!(self.success, "expected success: {self:?}");
        self
    }

    /// Fails with exactly one line on standard error, which is returned.
    #[track_caller]
    fn fails(self) -> String {
        assert!(!self.success, "expected a failure: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:?}");
        lines[0].to_string()
    }
}

/// A child process killed when dropped, with its standard output read line by line.
struct Background {
    child: Child,
    lines: Receiver<String>,
}

impl Background {
    fn spawn(mut command: Command) -> Background {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tandem");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Background { child, lines }
    }

    #[track_caller]
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(PATIENCE)
            .expect("a line from the background command")
    }

    /// Waits for the process to end by itself; returns whether it succeeded.
    fn wait(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the background command did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CSPC: &str = "apiVersion: cstor.openebs.io/v1
kind: CStorPoolCluster
metadata:
  name: cspc-stripe
  namespace: openebs
spec:
  pools:
  - nodeSelector:
      kubernetes.io/hostname: node-1
    dataRaidGroups:
    - blockDevices:
      - blockDeviceName: bd-node-1
    poolConfig:
      dataRaidGroupType: stripe
  - nodeSelector:
      kubernetes.io/hostname: node-2
    dataRaidGroups:
    - blockDevices:
      - blockDeviceName: bd-node-2
    poolConfig:
      dataRaidGroupType: stripe
";

fn cvc(name: &str, cluster: &str) -> String {
    format!(
        "apiVersion: cstor.openebs.io/v1
kind: CStorVolumeConfig
metadata:
  name: {name}
  labels:
    openebs.io/cstor-pool-cluster: {cluster}
spec:
  capacity:
    storage: 5Gi
  provision:
    capacity:
      storage: 5Gi
    replicaCount: 2
"
    )
}

/// A pool instance as its agent would report it: ONLINE on `node`.
fn online_cspi(name: &str, cluster: &str, node: &str) -> String {
    format!(
        "apiVersion: cstor.openebs.io/v1
kind: CStorPoolInstance
metadata:
  name: {name}
  labels:
    openebs.io/cstor-pool-cluster: {cluster}
    kubernetes.io/hostname: {node}
spec:
  hostName: {node}
  nodeSelector:
    kubernetes.io/hostname: {node}
  poolConfig:
    dataRaidGroupType: stripe
status:
  phase: ONLINE
  capacity:
    total: 10G
    free: 10G
    used: \"0\"
"
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}): {text}"))
}

#[test]
fn apply_get_describe_patch_delete() {
    let plane = ControlPlane::start("30s");
    let stream = format!("{CSPC}---\n{}", cvc("pvc-1", "cspc-stripe"));
    let applied = plane.apply("objects.yaml", &stream).ok();
    assert_eq!(
        applied.stdout,
        "cstorpoolcluster.cstor.openebs.io/cspc-stripe created\n\
         cstorvolumeconfig.cstor.openebs.io/pvc-1 created\n"
    );
    let again = plane.apply("objects.yaml", &stream).ok();
    assert_eq!(
        again.stdout,
        "cstorpoolcluster.cstor.openebs.io/cspc-stripe unchanged\n\
         cstorvolumeconfig.cstor.openebs.io/pvc-1 unchanged\n"
    );

    // Every spelling of the kind; the controllers make one pool instance per node.
    for spelling in ["cspc", "cspcs", "cstorpoolcluster", "CStorPoolCluster"] {
        let table = plane.run(&["get", spelling, "-n", "openebs"]).ok().stdout;
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("NAME  ") && lines[0].contains("DESIREDINSTANCES"));
        assert!(lines[1].starts_with("cspc-stripe "), "{table}");
    }
    let pools = plane.wait_for(
        &[
            "get",
            "cspi",
            "-l",
            "openebs.io/cstor-pool-cluster=cspc-stripe",
            "-o",
            "name",
        ],
        "two pool instances",
        |run| run.stdout.lines().count() == 2,
    );
    assert!(pools
        .stdout
        .lines()
        .all(|line| line.starts_with("cstorpoolinstance.cstor.openebs.io/cspc-stripe-")));

    // Tables.
    let table = plane.run(&["get", "cvc"]).ok().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("NAME ") && lines[0].contains("STATUS"));
    assert!(!lines[0].contains("CAPACITY"));
    assert!(lines[1].starts_with("pvc-1 ") && lines[1].contains("Pending"));
    let wide = plane
        .run(&["get", "cvc", "pvc-1", "-o", "wide"])
        .ok()
        .stdout;
    assert!(wide.lines().next().unwrap().contains("CAPACITY"), "{wide}");
    let everywhere = plane.run(&["get", "cvc", "-A"]).ok().stdout;
    assert!(everywhere.starts_with("NAMESPACE "), "{everywhere}");
    assert!(everywhere.lines().nth(1).unwrap().starts_with("openebs "));
    let pairs = plane
        .run(&["get", "cvc/pvc-1", "cspc/cspc-stripe", "--no-headers"])
        .ok()
        .stdout;
    assert!(pairs.starts_with("pvc-1 "), "{pairs}");
    assert!(pairs.contains("\n\ncspc-stripe "), "{pairs}");

    // YAML, JSON, names.
    let yaml = plane
        .run(&["get", "cvc", "pvc-1", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(
        yaml.starts_with("apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\n"),
        "{yaml}"
    );
    assert!(yaml.contains("replicaCount: 2"), "{yaml}");
    let list = plane.run(&["get", "cvc", "-o", "yaml"]).ok().stdout;
    assert!(list.starts_with("apiVersion: v1\nitems:\n- apiVersion: cstor.openebs.io/v1\n"));
    assert!(list.contains("\nkind: List\n"), "{list}");
    let one = json(
        &plane
            .run(&["get", "cvc", "pvc-1", "-o", "json"])
            .ok()
            .stdout,
    );
    assert_eq!(one["kind"], "CStorVolumeConfig");
    assert_eq!(one["spec"]["provision"]["replicaCount"], 2);
    let several = json(&plane.run(&["get", "cspi", "-o", "json"]).ok().stdout);
    assert_eq!(several["kind"], "List");
    assert_eq!(several["items"].as_array().unwrap().len(), 2);
    let names = plane.run(&["get", "cvc", "-o", "name"]).ok().stdout;
    assert_eq!(names, "cstorvolumeconfig.cstor.openebs.io/pvc-1\n");

    // Nothing, missing, unknown.
    let empty = plane.run(&["get", "cvr"]).ok();
    assert_eq!(empty.stdout, "");
    assert_eq!(empty.stderr, "No resources found in openebs namespace.\n");
    let missing = plane.run(&["get", "cvc", "nope"]).fails();
    assert_eq!(
        missing,
        "Error from server (NotFound): cstorvolumeconfigs.cstor.openebs.io \"nope\" not found"
    );
    let partly = plane.run(&["get", "cvc", "pvc-1", "nope"]);
    assert!(partly.stdout.contains("pvc-1"), "{partly:?}");
    assert_eq!(partly.fails(), missing);
    let unknown = plane.run(&["get", "pods"]).fails();
    assert!(
        unknown.starts_with("error: unknown kind \"pods\"; known kinds: cspc (CStorPoolCluster)"),
        "{unknown}"
    );
    let format = plane.run(&["get", "cvc", "-o", "toml"]).fails();
    assert!(
        format.contains("unknown output format \"toml\""),
        "{format}"
    );

    // describe shows the controllers' warning: no pool is ONLINE without agents.
    let described = plane.wait_for(
        &["describe", "cvc", "pvc-1"],
        "the provisioning warning",
        |run| run.stdout.contains("not enough pools are available"),
    );
    assert!(
        described.stdout.starts_with("Name:"),
        "{}",
        described.stdout
    );
    assert!(described.stdout.contains("pvc-1"));
    assert!(described.stdout.contains("Events:"));
    assert!(described.stdout.contains("Warning"));
    let missing = plane.run(&["describe", "cvc", "nope"]).fails();
    assert!(missing.contains("(NotFound)"), "{missing}");

    // patch
    let patch = r#"{"metadata":{"labels":{"team":"storage"}}}"#;
    let patched = plane
        .run(&["patch", "cvc", "pvc-1", "--type", "merge", "-p", patch])
        .ok();
    assert_eq!(
        patched.stdout,
        "cstorvolumeconfig.cstor.openebs.io/pvc-1 patched\n"
    );
    let again = plane
        .run(&["patch", "cvc/pvc-1", "--type=merge", "-p", patch])
        .ok();
    assert_eq!(
        again.stdout,
        "cstorvolumeconfig.cstor.openebs.io/pvc-1 patched (no change)\n"
    );
    let labelled = plane
        .run(&["get", "cvc", "-l", "team=storage", "-o", "name"])
        .ok();
    assert_eq!(
        labelled.stdout,
        "cstorvolumeconfig.cstor.openebs.io/pvc-1\n"
    );
    let refused = plane
        .run(&[
            "patch",
            "cvc",
            "pvc-1",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"provision":{"replicaCount":3}}}"#,
        ])
        .fails();
    assert!(
        refused.starts_with("Error from server (BadRequest): admission webhook"),
        "{refused}"
    );
    let strategic = plane
        .run(&["patch", "cvc", "pvc-1", "--type", "strategic", "-p", patch])
        .fails();
    assert!(
        strategic.contains("--type strategic is not supported"),
        "{strategic}"
    );
    let garbage = plane.run(&["patch", "cvc", "pvc-1", "-p", "{nope"]).fails();
    assert!(garbage.contains("not valid JSON"), "{garbage}");

    // delete
    let deleted = plane.run(&["delete", "cvc", "pvc-1"]).ok();
    assert_eq!(
        deleted.stdout,
        "cstorvolumeconfig.cstor.openebs.io \"pvc-1\" deleted\n"
    );
    let gone = plane.run(&["delete", "cvc", "pvc-1"]).fails();
    assert_eq!(
        gone,
        "Error from server (NotFound): cstorvolumeconfigs.cstor.openebs.io \"pvc-1\" not found"
    );
    plane.run(&["get", "cvc", "pvc-1"]).fails();
    let by_file = plane
        .run(&[
            "delete",
            "-f",
            plane.file("cspc.yaml", CSPC).to_str().unwrap(),
        ])
        .ok();
    assert_eq!(
        by_file.stdout,
        "cstorpoolcluster.cstor.openebs.io \"cspc-stripe\" deleted\n"
    );
}

#[test]
fn apply_and_create_name_the_file_and_line_of_a_mistake() {
    let plane = ControlPlane::start("30s");
    let typo = cvc("pvc-1", "cspc-stripe").replace("  provision:", "  provisoin:");
    let path = plane.file("typo.yaml", &format!("{CSPC}---\n{typo}"));
    let error = plane.run(&["apply", "-f", path.to_str().unwrap()]).fails();
    assert!(error.starts_with("error: "), "{error}");
    assert!(error.contains("typo.yaml"), "{error}");
    assert!(error.contains("document 2, line 32, column 3"), "{error}");
    assert!(error.contains("provisoin"), "{error}");
    // Nothing of a bad file is applied.
    assert_eq!(plane.run(&["get", "cspc", "-o", "name"]).ok().stdout, "");

    let broken = plane.file("broken.yaml", "apiVersion: v1\nkind: [Event\n");
    let error = plane
        .run(&["create", "-f", broken.to_str().unwrap()])
        .fails();
    assert!(
        error.contains("broken.yaml") && error.contains("line "),
        "{error}"
    );

    let missing = plane.run(&["apply", "-f", "/nonexistent/x.yaml"]).fails();
    assert!(missing.contains("/nonexistent/x.yaml"), "{missing}");

    // From standard input; create refuses what exists, apply does not.
    let from_stdin = plane.run_with_stdin(&["create", "-f", "-"], CSPC).ok();
    assert_eq!(
        from_stdin.stdout,
        "cstorpoolcluster.cstor.openebs.io/cspc-stripe created\n"
    );
    let exists = plane.run_with_stdin(&["create", "-f", "-"], CSPC).fails();
    assert_eq!(
        exists,
        "Error from server (AlreadyExists): error when creating \"-\": \
         cstorpoolclusters.cstor.openebs.io \"cspc-stripe\" already exists"
    );
    let changed = CSPC.replace("bd-node-2", "bd-node-2b");
    let configured = plane.run_with_stdin(&["apply", "-f", "-"], &changed).ok();
    assert_eq!(
        configured.stdout,
        "cstorpoolcluster.cstor.openebs.io/cspc-stripe configured\n"
    );
    let yaml = plane
        .run(&["get", "cspc", "cspc-stripe", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains("bd-node-2b"), "{yaml}");

    // A document the control plane refuses is reported; the others still go through.
    let no_cluster =
        cvc("pvc-2", "x").replace("    openebs.io/cstor-pool-cluster: x\n", "    a: b\n");
    let mixed = format!("{no_cluster}---\n{}", cvc("pvc-3", "cspc-stripe"));
    let run = plane.apply("mixed.yaml", &mixed);
    assert!(
        run.stdout
            .contains("cstorvolumeconfig.cstor.openebs.io/pvc-3 created"),
        "{run:?}"
    );
    let error = run.fails();
    assert!(
        error.starts_with("Error from server (Invalid): error when creating")
            && error.contains("missing label openebs.io/cstor-pool-cluster"),
        "{error}"
    );
}

#[test]
fn an_unreachable_control_plane_is_one_clear_line() {
    let output = Command::new(TANDEM)
        .args(["get", "cvc", "--server", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    let error = Run::of(output).fails();
    assert!(
        error.starts_with("error: cannot reach the Tandem control plane at http://127.0.0.1:1"),
        "{error}"
    );

    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(TANDEM)
        .args(["get", "cvc", "--data-dir"])
        .arg(dir.path())
        .env_remove("TANDEM_SERVER")
        .output()
        .unwrap();
    let error = Run::of(output).fails();
    assert!(
        error.starts_with("error: no Tandem cluster found"),
        "{error}"
    );
}

/// An editor script: copies what it was shown to `shown-N.yaml` in `dir` (N from 0), then runs
/// the N-th command of `edits` on the file ($1), or leaves it alone past the last.
fn editor(dir: &Path, edits: &[&str]) -> String {
    let mut script = String::from(
        "#!/bin/sh\nn=$(ls \"$DIR\" | grep -c '^shown-')\ncp \"$1\" \"$DIR/shown-$n.yaml\"\ncase $n in\n",
    );
    for (index, edit) in edits.iter().enumerate() {
        script.push_str(&format!("  {index}) {edit} ;;\n"));
    }
    script.push_str("esac\n");
    let path = dir.join("editor.sh");
    std::fs::write(&path, script).unwrap();
    format!("sh {}", path.display())
}

fn edit(plane: &ControlPlane, target: &[&str], edits: &[&str]) -> (Run, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["edit"];
    args.extend_from_slice(target);
    let output = plane
        .command(&args)
        .env("EDITOR", editor(dir.path(), edits))
        .env("DIR", dir.path())
        .env("TANDEM", TANDEM)
        .env("SERVER", &plane.address)
        .output()
        .unwrap();
    (Run::of(output), dir)
}

fn shown(dir: &tempfile::TempDir, round: usize) -> String {
    std::fs::read_to_string(dir.path().join(format!("shown-{round}.yaml"))).unwrap()
}

#[test]
fn edit_saves_a_change_and_reopens_a_refused_one() {
    // Pools stay as applied (no OFFLINE marking) for the length of the test.
    let plane = ControlPlane::start("600s");
    plane.apply("cvc.yaml", &cvc("pvc-1", "cspc-stripe")).ok();

    // A change that is accepted.
    let (run, dir) = edit(
        &plane,
        &["cvc", "pvc-1"],
        &[r#"sed -i 's/^  labels:$/  labels:\n    team: storage/' "$1""#],
    );
    let run = run.ok();
    assert_eq!(
        run.stdout,
        "cstorvolumeconfig.cstor.openebs.io/pvc-1 edited\n"
    );
    let first = shown(&dir, 0);
    assert!(
        first.starts_with(
            "# Please edit the object below. Lines beginning with a '#' will be ignored,\n"
        ),
        "{first}"
    );
    assert!(first.contains("\nkind: CStorVolumeConfig\n"), "{first}");
    let yaml = plane
        .run(&["get", "cvc", "pvc-1", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains("team: storage"), "{yaml}");

    // No change, and an emptied file, cancel.
    let (run, _dir) = edit(&plane, &["cvc/pvc-1"], &["true"]);
    let run = run.ok();
    assert_eq!(run.stderr, "Edit cancelled, no changes made.\n");
    let (run, _dir) = edit(&plane, &["cvc", "pvc-1"], &[r#": > "$1""#]);
    assert_eq!(run.ok().stderr, "Edit cancelled, no changes made.\n");

    // A refused change reopens with the error; saving it again unchanged gives up.
    let (run, dir) = edit(
        &plane,
        &["cvc", "pvc-1"],
        &[r#"sed -i 's/replicaCount: 2/replicaCount: 3/' "$1""#],
    );
    let error = run.fails();
    assert!(
        error.starts_with("error: Edit cancelled, no valid changes were saved."),
        "{error}"
    );
    let reopened = shown(&dir, 1);
    assert!(
        reopened.contains(
            "#\n# cstorvolumeconfigs.cstor.openebs.io \"pvc-1\" was not valid:\n# * admission webhook"
        ),
        "{reopened}"
    );
    assert!(reopened.contains("replicaCount: 3"), "{reopened}");
    let yaml = plane
        .run(&["get", "cvc", "pvc-1", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains("replicaCount: 2"), "{yaml}");

    // A refused change, then fixed in the reopened file, is saved.
    let (run, dir) = edit(
        &plane,
        &["cvc", "pvc-1"],
        &[
            r#"sed -i 's/replicaCount: 2/replicaCount: 3/; s/team: storage/team: blocks/' "$1""#,
            r#"sed -i 's/replicaCount: 3/replicaCount: 2/' "$1""#,
        ],
    );
    assert_eq!(
        run.ok().stdout,
        "cstorvolumeconfig.cstor.openebs.io/pvc-1 edited\n"
    );
    assert!(shown(&dir, 1).contains("team: blocks"));
    let yaml = plane
        .run(&["get", "cvc", "pvc-1", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains("team: blocks"), "{yaml}");

    // A syntax error reopens with it.
    let (run, dir) = edit(
        &plane,
        &["cvc", "pvc-1"],
        &[r#"sed -i 's/^kind: .*/kind: [CStorVolumeConfig/' "$1""#],
    );
    let error = run.fails();
    assert!(
        error.contains("Edit cancelled, no valid changes were saved."),
        "{error}"
    );
    assert!(
        shown(&dir, 1).contains("# The edited file had a syntax error: "),
        "{}",
        shown(&dir, 1)
    );

    // A concurrent change: the save conflicts, the file reopens on the latest version, and
    // saving it again applies the edit.
    let (run, dir) = edit(
        &plane,
        &["cvc", "pvc-1"],
        &[concat!(
            r#"$TANDEM patch --server "$SERVER" cvc pvc-1 -p '{"metadata":{"labels":{"other":"x"}}}' >/dev/null && "#,
            r#"sed -i 's/team: blocks/team: mine/' "$1""#
        )],
    );
    assert_eq!(
        run.ok().stdout,
        "cstorvolumeconfig.cstor.openebs.io/pvc-1 edited\n"
    );
    let reopened = shown(&dir, 1);
    assert!(
        reopened.contains("was changed while you edited it"),
        "{reopened}"
    );
    let yaml = plane
        .run(&["get", "cvc", "pvc-1", "-o", "yaml"])
        .ok()
        .stdout;
    assert!(yaml.contains("team: mine"), "{yaml}");

    // Missing objects and editors that fail.
    let missing = edit(&plane, &["cvc", "nope"], &["true"]).0.fails();
    assert!(missing.contains("(NotFound)"), "{missing}");
    let (run, _dir) = edit(&plane, &["cvc", "pvc-1"], &["exit 3"]);
    assert!(run.fails().contains("failed"));
}

#[test]
fn get_watch_prints_each_change() {
    let plane = ControlPlane::start("30s");
    plane.apply("cvc.yaml", &cvc("pvc-1", "cspc-stripe")).ok();
    let mut command = plane.command(&["get", "cvc", "-w", "--watch-timeout", "60s"]);
    let watch = Background::spawn({
        command.stdin(Stdio::null());
        command
    });
    assert!(watch.next_line().starts_with("NAME "));
    assert!(watch.next_line().starts_with("pvc-1 "));
    plane
        .run(&[
            "patch",
            "cvc",
            "pvc-1",
            "-p",
            r#"{"metadata":{"labels":{"a":"b"}}}"#,
        ])
        .ok();
    assert!(watch.next_line().starts_with("pvc-1 "));
    plane.apply("cvc2.yaml", &cvc("pvc-2", "cspc-stripe")).ok();
    assert!(watch.next_line().starts_with("pvc-2 "));
    drop(watch);

    // A bounded watch ends by itself.
    let mut command = plane.command(&["get", "cvr", "-w", "--watch-timeout", "1s"]);
    command.stdin(Stdio::null());
    let mut bounded = Background::spawn(command);
    assert!(bounded.wait());

    // Watching a named object that does not exist fails at once, as kubectl does, instead of
    // watching for a change that cannot come.
    let mut command = plane.command(&["get", "cvc", "nope", "-w"]);
    command.stdin(Stdio::null());
    let mut missing = Background::spawn(command);
    assert!(!missing.wait(), "watching a missing object succeeded");
    let said = plane.run(&["get", "cvc", "nope"]).fails();
    assert!(
        said.contains(r#"cstorvolumeconfigs.cstor.openebs.io "nope" not found"#),
        "{said}"
    );
}

#[test]
fn volume_create_waits_until_bound() {
    let plane = ControlPlane::start("600s");
    // Pools as their agents would report them, then their cluster (which has them already).
    let pools = format!(
        "{}---\n{}---\n{CSPC}",
        online_cspi("cspc-stripe-aaaa", "cspc-stripe", "node-1"),
        online_cspi("cspc-stripe-bbbb", "cspc-stripe", "node-2"),
    );
    plane.apply("pools.yaml", &pools).ok();

    let run = plane
        .run(&[
            "volume",
            "create",
            "pvc-v",
            "--size",
            "1Gi",
            "--replicas",
            "2",
        ])
        .ok();
    assert!(
        run.stdout
            .starts_with("cstorvolumeconfig.cstor.openebs.io/pvc-v created\n"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("volume pvc-v is Bound: 2 replicas, in pools "),
        "{run:?}"
    );
    assert!(run.stdout.contains("cspc-stripe-aaaa") && run.stdout.contains("cspc-stripe-bbbb"));
    let table = plane.run(&["get", "cvc", "pvc-v"]).ok().stdout;
    assert!(table.contains("Bound"), "{table}");

    // Three replicas do not fit on two nodes: the controllers' warning is the error.
    let run = plane.run(&[
        "volume",
        "create",
        "pvc-w",
        "--size",
        "1Gi",
        "--replicas",
        "3",
        "--timeout",
        "5s",
    ]);
    assert!(run.stdout.contains("not enough pools"), "{run:?}");
    let error = run.fails();
    assert!(
        error.starts_with(
            "error: volume pvc-w is not Bound after 5s: not enough pools are available"
        ),
        "{error}"
    );

    let run = plane
        .run(&[
            "volume",
            "create",
            "pvc-x",
            "--size",
            "1Gi",
            "--cspc",
            "nope",
            "--wait=false",
        ])
        .fails();
    assert!(
        run.contains("cstorpoolclusters.cstor.openebs.io \"nope\" not found"),
        "{run}"
    );
    let bad_size = plane
        .run(&["volume", "create", "pvc-x", "--size", "lots"])
        .fails();
    assert!(bad_size.contains("--size \"lots\""), "{bad_size}");

    let second = CSPC
        .replace("cspc-stripe", "cspc-other")
        .replace("bd-node", "bd2-node");
    plane.apply("other.yaml", &second).ok();
    let error = plane
        .run(&["volume", "create", "pvc-x", "--size", "1Gi"])
        .fails();
    assert!(
        error.contains("has 2 CStorPoolClusters (cspc-other, cspc-stripe): name one with --cspc"),
        "{error}"
    );

    let run = plane.run(&["volume", "delete", "pvc-w"]).ok();
    assert_eq!(
        run.stdout,
        "cstorvolumeconfig.cstor.openebs.io \"pvc-w\" deleted\n"
    );
}
