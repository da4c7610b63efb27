//! Native spawner: `command=[...]` children speaking length-prefixed frames over stdin/stdout.
//!
//! Children die with this process: on Linux each child asks the kernel for SIGKILL when its parent
//! dies (`PR_SET_PDEATHSIG`, which covers a SIGKILLed parent), and `kill_children_at_exit` ends the
//! ones still registered at interpreter exit (any platform).

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{BoxFuture, Proc, ProcHandle, Spawner};

/// Frames are a 4-byte big-endian length and that many bytes. A child signals readiness with the
/// frame `b"ready"` (see `python -m tether.worker`).
pub const READY: &[u8] = b"ready";
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
const STDERR_TAIL: usize = 4096;
/// Bytes of a wrong ready frame quoted in the error.
const BAD_FRAME_QUOTE: usize = 64;

pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if data.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds {MAX_FRAME}", data.len()),
        ));
    }
    w.write_all(&(data.len() as u32).to_be_bytes()).await?;
    w.write_all(data).await?;
    w.flush().await
}

pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let n = u32::from_be_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {n} bytes exceeds {MAX_FRAME}"),
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Up to `n` bytes: fewer only at end of stream.
async fn read_up_to<R: tokio::io::AsyncRead + Unpin>(r: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut buf[got..]).await? {
            0 => break,
            k => got += k,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

enum NotReady {
    /// stdout closed (or failed) before any byte.
    Closed(Option<std::io::Error>),
    /// Something other than the ready frame (what was read of it).
    BadFrame(Vec<u8>),
}

/// The ready frame, or what came instead.
async fn read_ready<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<(), NotReady> {
    let expected: Vec<u8> = [&(READY.len() as u32).to_be_bytes()[..], READY].concat();
    let got = match read_up_to(r, expected.len()).await {
        Ok(b) => b,
        Err(e) => return Err(NotReady::Closed(Some(e))),
    };
    if got == expected {
        return Ok(());
    }
    if got.is_empty() {
        return Err(NotReady::Closed(None));
    }
    // quote a little more of what it wrote (text on stdout, typically), without waiting for it
    let mut quote = got;
    let mut more = vec![0u8; BAD_FRAME_QUOTE.saturating_sub(quote.len())];
    if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), async {
        use tokio::io::AsyncReadExt;
        r.read(&mut more).await
    })
    .await
    {
        quote.extend_from_slice(&more[..n]);
    }
    Err(NotReady::BadFrame(quote))
}

pub struct NativeSpawner {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<std::path::PathBuf>,
}

type Tail = Arc<Mutex<VecDeque<u8>>>;

fn tail_text(t: &Tail) -> String {
    let t = t.lock().unwrap_or_else(|p| p.into_inner());
    let (a, b) = t.as_slices();
    let mut v = a.to_vec();
    v.extend_from_slice(b);
    String::from_utf8_lossy(&v).trim().to_string()
}

fn with_tail(msg: String, t: &Tail) -> String {
    let tail = tail_text(t);
    if tail.is_empty() {
        msg
    } else {
        format!("{msg}; stderr: {tail}")
    }
}

/// Pids of the children still owned by some pool, each with its parent's pid, for
/// `kill_children_at_exit`: a forked child inherits the set, and its exit must not kill its parent's.
static CHILDREN: Mutex<BTreeMap<u32, u32>> = Mutex::new(BTreeMap::new());

fn children() -> std::sync::MutexGuard<'static, BTreeMap<u32, u32>> {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registered while a child may be running; dropped when it was killed or reaped.
struct Registered(u32);

impl Drop for Registered {
    fn drop(&mut self) {
        children().remove(&self.0);
    }
}

/// SIGKILL every child a pool still owns (idle, lent, initializing); detached children are left
/// alone.
pub(super) fn kill_children_at_exit() {
    let me = std::process::id();
    let pids: Vec<u32> =
        std::mem::take(&mut *children()).into_iter().filter(|(_, parent)| *parent == me).map(|(pid, _)| pid).collect();
    for pid in pids {
        // SAFETY: kill(2) on a pid this process started and has not reaped (a registered pid is
        // removed before or when it is reaped), so it cannot name another process.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Ask the kernel to SIGKILL the child when this process dies, even by SIGKILL.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs between fork and exec; prctl(2) and getppid(2) are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // the parent died before prctl took effect: nobody would kill this child
            if libc::getppid() != parent {
                return Err(std::io::Error::other("the parent exited during the spawn"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut tokio::process::Command) {}

pub struct NativeProc {
    pid: u32,
    argv0: String,
    child: Mutex<Option<tokio::process::Child>>,
    io: tokio::sync::Mutex<(tokio::process::ChildStdin, tokio::process::ChildStdout)>,
    stderr: Tail,
    exit: Arc<Mutex<Option<std::process::ExitStatus>>>,
    /// A request ended half way (timed out or cancelled): its reply would answer the next request,
    /// so the worker was killed and is never handed out again.
    out_of_step: AtomicBool,
    registered: Mutex<Option<Registered>>,
}

/// Why `NativeProc::request` failed.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestError {
    TimedOut { pid: u32, timeout: Duration },
    Failed(String),
}

/// Marks the worker out of step unless the request it guards completed.
struct InRequest<'a> {
    proc: &'a NativeProc,
    done: bool,
}

impl Drop for InRequest<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.proc.out_of_step.store(true, Ordering::SeqCst);
            if let Some(c) = self.proc.child.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                let _ = c.start_kill();
            }
        }
    }
}

impl NativeProc {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Exit status once the child exited (None while running).
    pub fn returncode(&self) -> Option<i32> {
        self.poll_exit().map(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| -s.signal().unwrap_or(0))
        })
    }

    fn poll_exit(&self) -> Option<std::process::ExitStatus> {
        let mut exit = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        if exit.is_none() {
            if let Some(c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    *exit = Some(s);
                    self.registered.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
            }
        }
        *exit
    }

    pub fn stderr_tail(&self) -> String {
        tail_text(&self.stderr)
    }

    /// Send one frame and read the reply frame, within `timeout` if given. A request that does not
    /// complete (timeout, cancellation, broken pipe) kills the worker: a late reply must never answer
    /// a later request.
    pub async fn request(&self, data: &[u8], timeout: Option<Duration>) -> Result<Vec<u8>, RequestError> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let until = |d: Option<tokio::time::Instant>| async move {
            match d {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let timed_out = || RequestError::TimedOut { pid: self.pid, timeout: timeout.unwrap_or_default() };
        let mut io = tokio::select! {
            io = self.io.lock() => io,
            _ = until(deadline) => return Err(timed_out()),
        };
        if self.out_of_step.load(Ordering::SeqCst) {
            return Err(RequestError::Failed(format!(
                "worker pid {} was killed: an earlier request to it did not complete",
                self.pid
            )));
        }
        let mut guard = InRequest { proc: self, done: false };
        let (stdin, stdout) = &mut *io;
        let exchange = async {
            write_frame(stdin, data).await?;
            read_frame(stdout).await
        };
        let r = tokio::select! {
            r = exchange => r,
            _ = until(deadline) => return Err(timed_out()),
        };
        let reply = r.map_err(|e| {
            RequestError::Failed(with_tail(format!("worker pid {} failed the request: {e}", self.pid), &self.stderr))
        })?;
        guard.done = true;
        Ok(reply)
    }
}

impl ProcHandle for NativeProc {
    fn is_alive(&self) -> bool {
        !self.out_of_step.load(Ordering::SeqCst)
            && self.poll_exit().is_none()
            && self.child.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
    fn dispose(&self) -> BoxFuture<()> {
        // `self` is behind an Arc owned by the caller; kill synchronously, reap in the future
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let registered = self.registered.lock().unwrap_or_else(|p| p.into_inner()).take();
        let exit = self.exit.clone();
        Box::pin(async move {
            if let Some(mut c) = child {
                let _ = c.start_kill();
                drop(registered);
                if let Ok(Ok(st)) = tokio::time::timeout(Duration::from_secs(5), c.wait()).await {
                    exit.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(st);
                }
            }
        })
    }
    fn describe(&self) -> String {
        format!("{} (pid {})", self.argv0, self.pid)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn detached(&self) {
        self.registered.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
    fn kill_now(&self) {
        if let Some(c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = c.start_kill();
        }
    }
}

impl Spawner for NativeSpawner {
    fn spawn(&self, limit: Duration) -> BoxFuture<Result<Proc, String>> {
        let argv = self.argv.clone();
        let env = self.env.clone();
        let cwd = self.cwd.clone();
        Box::pin(async move {
            use tokio::io::AsyncReadExt;
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..])
                .envs(env)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            if let Some(d) = cwd {
                cmd.current_dir(d);
            }
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().map_err(|e| format!("could not start {}: {e}", argv[0]))?;
            let pid = child.id().unwrap_or(0);
            children().insert(pid, std::process::id());
            let registered = Registered(pid);
            let stderr: Tail = Arc::new(Mutex::new(VecDeque::new()));
            let drained = Arc::new(tokio::sync::Notify::new());
            if let Some(mut err) = child.stderr.take() {
                let (tail, drained) = (stderr.clone(), drained.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = err.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                        t.extend(&buf[..n]);
                        let over = t.len().saturating_sub(STDERR_TAIL);
                        t.drain(..over);
                    }
                    drained.notify_one();
                });
            }
            let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err("child has no stdin/stdout pipes".into());
            };
            let outcome = tokio::time::timeout(limit, read_ready(&mut stdout)).await;
            if let Ok(Ok(())) = outcome {
                return Ok(Arc::new(NativeProc {
                    pid,
                    argv0: argv[0].clone(),
                    child: Mutex::new(Some(child)),
                    io: tokio::sync::Mutex::new((stdin, stdout)),
                    stderr,
                    exit: Arc::new(Mutex::new(None)),
                    out_of_step: AtomicBool::new(false),
                    registered: Mutex::new(Some(registered)),
                }) as Proc);
            }
            // the child will not become ready: collect how it died, for the error
            let _ = child.start_kill();
            let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            drop(registered);
            // the stderr reader ends at EOF, which the kill brings (unless a grandchild holds the pipe)
            let _ = tokio::time::timeout(Duration::from_millis(200), drained.notified()).await;
            let how = match (outcome, status) {
                (Err(_), _) => format!(
                    "did not finish within {:.1}s (initialize_timeout) without signaling ready; it was killed",
                    limit.as_secs_f64()
                ),
                (Ok(Err(NotReady::BadFrame(b))), _) => format!(
                    "wrote \"{}\" to stdout instead of the ready frame (4-byte big-endian length, then b\"ready\")",
                    String::from_utf8_lossy(&b).escape_debug()
                ),
                (Ok(Err(NotReady::Closed(_))), Ok(Ok(s))) => format!("exited with {s} before signaling ready"),
                (Ok(Err(NotReady::Closed(e))), _) => format!(
                    "closed its stdout before signaling ready{}",
                    e.map(|e| format!(": {e}")).unwrap_or_default()
                ),
                (Ok(Ok(())), _) => unreachable!("handled above"),
            };
            Err(with_tail(format!("{} (pid {pid}) {how}", argv[0]), &stderr))
        })
    }
}

#[cfg(test)]
mod native_tests {
    use super::*;

    fn sh(script: &str) -> Arc<NativeSpawner> {
        Arc::new(NativeSpawner { argv: vec!["sh".into(), "-c".into(), script.into()], env: vec![], cwd: None })
    }

    #[tokio::test]
    async fn failing_child_reports_exit_and_stderr() {
        let err = match sh("echo 'ModuleNotFoundError: agent' >&2; exit 3").spawn(Duration::from_secs(10)).await {
            Err(e) => e,
            Ok(_) => panic!("should fail"),
        };
        assert!(err.contains("exit status: 3") && err.contains("ModuleNotFoundError: agent"), "{err}");
    }

    #[tokio::test]
    async fn ready_child_is_killed_and_reaped_on_dispose() {
        // printf a frame: length 5 then "ready", then sleep
        let p = sh("printf '\\000\\000\\000\\005ready'; exec sleep 30").spawn(Duration::from_secs(10)).await.unwrap();
        assert!(p.is_alive());
        let pid = p.as_any().downcast_ref::<NativeProc>().unwrap().pid();
        p.dispose().await;
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "no zombie left");
    }
}
