//! Relay throughput and peak memory: mixed JSON-RPC streams through `km monitor -- cat` (with no
//! plugins, with every bundled observer, with all of them but compliance-reporting, with every
//! bundled plugin interceptors included, and with each alone) and through a plain pipe relay
//! (`sh -c 'cat | cat'`: one cat relays, one echoes).
//! A writer thread writes one message per `write`, as a client does; a reader thread reads
//! everything back; the bytes that came back are compared with those sent. km's peak RSS (VmHWM)
//! is read while it still runs, just before its stdin is closed.
//!
//! Two mixes: the agent mix of the first round (about 8 KB a line, with results up to
//! 512 KiB) and a small-message mix (80–2000 B: mostly `tools/call` requests, their results and
//! progress notifications), which is what MCP traffic mostly is and where the cost per message
//! shows. Pipes and the Unix stream socketpairs that Node-based clients hand their servers side
//! by side, each against `cat | cat` given the same kind of stdio.
//!
//! Every variant runs once per round, in turn, so the machine's noise falls on all alike; a
//! ratio is taken within each round and the median and spread of the rounds are reported. Each
//! km run with plugins is checked ([`BenchEnv::check_run`]): every plugin ran, premium ones were
//! authorised, and what each was handed and dropped is counted. A variant in whose runs any
//! plugin dropped a message is reported as such and not judged against its target.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use km_tests::{spawn_client, ClientStdio};

use crate::env::{median, proc_status_kb, BenchEnv, Handed, LIGHTER_OBSERVERS, MAX_NOOPS};
use crate::report::{Report, Row};
use crate::Options;

/// A small deterministic generator (xorshift64*), so every run sends the same stream.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// `n` newline-terminated JSON-RPC messages: 60% requests (80–400 B), 25% notifications,
/// 14% results of 1–64 KiB, 1% results of 100–512 KiB.
pub(crate) fn messages(n: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let text = |rng: &mut Rng, len: usize| -> String {
        (0..len)
            .map(|_| (b'a' + (rng.next() % 26) as u8) as char)
            .collect()
    };
    (0..n)
        .map(|i| {
            let roll = rng.range(0, 100);
            let line = if roll < 60 {
                let len = rng.range(20, 340);
                format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"search","arguments":{{"q":"{}"}}}}}}"#,
                    text(&mut rng, len)
                )
            } else if roll < 85 {
                let len = rng.range(20, 200);
                format!(
                    r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{i},"message":"{}"}}}}"#,
                    text(&mut rng, len)
                )
            } else {
                let len = if roll < 99 {
                    rng.range(1024, 64 * 1024)
                } else {
                    rng.range(100 * 1024, 512 * 1024)
                };
                format!(
                    r#"{{"jsonrpc":"2.0","id":{i},"result":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
                    text(&mut rng, len)
                )
            };
            let mut bytes = line.into_bytes();
            bytes.push(b'\n');
            bytes
        })
        .collect()
}

/// The small-message mix, one line at a time (the long session generates it as it writes):
/// 45% `tools/call` requests (80–400 B), 35% their results (200–2000 B, one in fifty a JSON-RPC
/// error), 20% progress notifications (80–250 B). Every result answers an earlier request.
pub(crate) struct SmallMix {
    rng: Rng,
    i: u64,
    /// Requests not yet answered (ids).
    open: std::collections::VecDeque<u64>,
}

impl SmallMix {
    pub(crate) fn new() -> Self {
        SmallMix {
            rng: Rng(0x2545_F491_4F6C_DD1D),
            i: 0,
            open: std::collections::VecDeque::new(),
        }
    }

    fn text(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| (b'a' + (self.rng.next() % 26) as u8) as char)
            .collect()
    }

    /// The next line, newline included.
    pub(crate) fn next_line(&mut self) -> Vec<u8> {
        self.i += 1;
        let i = self.i;
        let roll = self.rng.range(0, 100);
        let line = if roll < 45 || (roll < 80 && self.open.is_empty()) {
            self.open.push_back(i);
            if self.open.len() > 64 {
                self.open.pop_front();
            }
            let len = self.rng.range(8, 320);
            let q = self.text(len);
            format!(
                r#"{{"jsonrpc":"2.0","id":{i},"method":"tools/call","params":{{"name":"search","arguments":{{"q":"{q}"}},"_meta":{{"progressToken":{i}}}}}}}"#
            )
        } else if roll < 80 {
            let id = self.open.pop_front().unwrap_or(0);
            if roll == 79 {
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32602,"message":"unknown tool"}}}}"#
                )
            } else {
                let len = self.rng.range(130, 1930);
                let text = self.text(len);
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"{text}"}}],"isError":false}}}}"#
                )
            }
        } else {
            let token = self.open.back().copied().unwrap_or(0);
            let len = self.rng.range(8, 170);
            let text = self.text(len);
            format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/progress","params":{{"progressToken":{token},"progress":{i},"message":"{text}"}}}}"#
            )
        };
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        bytes
    }
}

/// `n` lines of the small-message mix.
pub(crate) fn small_messages(n: usize) -> Vec<Vec<u8>> {
    let mut mix = SmallMix::new();
    (0..n).map(|_| mix.next_line()).collect()
}

/// One pass of the stream through `cmd`.
pub(crate) struct Pass {
    pub(crate) seconds: f64,
    pub(crate) peak_rss_kb: Option<u64>,
    /// CPU time (user and system) of the command and every process it waited for (km and its
    /// server, or both `cat`s), start to exit.
    pub(crate) cpu_seconds: f64,
    /// CPU time of the command's busiest thread when the last byte came back
    /// ([`busiest_thread_seconds`]).
    pub(crate) busiest_thread_seconds: Option<f64>,
}

/// The CPU time so far of the busiest thread of process `pid` (`/proc/PID/task/*/schedstat`:
/// nanoseconds on a CPU). A thread that every message passes through (a pump, a lossless
/// plugin's worker) cannot finish sooner than its own CPU time, however many cores are idle.
pub(crate) fn busiest_thread_seconds(pid: u32) -> Option<f64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .max()
        .map(|ns| ns as f64 / 1e9)
}

/// CPU time (user and system) of the processes this one has waited for, so far
/// (`RUSAGE_CHILDREN`: a child's figure includes the children it waited for). km-bench runs
/// one command at a time, so the difference across a pass is that command's.
#[allow(unsafe_code)]
pub(crate) fn children_cpu_seconds() -> f64 {
    // SAFETY: `getrusage` writes one `rusage`, which `usage` is (zeroed: a plain C struct of
    // integers, for which all zeros is a valid value), and reads nothing else;
    // `RUSAGE_CHILDREN` is a constant it accepts.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Sends `msgs` through the process `cmd` (which must echo them), checks what came back.
pub(crate) fn pass(
    cmd: Command,
    msgs: &[Vec<u8>],
    expected: &[u8],
    log: &std::path::Path,
) -> Result<Pass> {
    pass_with(cmd, ClientStdio::Pipes, msgs, expected, log)
}

/// [`pass`] with stdio of the kind `stdio`.
pub(crate) fn pass_with(
    cmd: Command,
    stdio: ClientStdio,
    msgs: &[Vec<u8>],
    expected: &[u8],
    log: &std::path::Path,
) -> Result<Pass> {
    pass_with_deadline(cmd, stdio, msgs, expected, log, Duration::from_secs(120))
}

/// [`pass_with`] whose process the harness's watchdog kills after `deadline` (under valgrind,
/// km is 50x slower). Its stderr goes to `log`.
pub(crate) fn pass_with_deadline(
    mut cmd: Command,
    stdio: ClientStdio,
    msgs: &[Vec<u8>],
    expected: &[u8],
    log: &std::path::Path,
    deadline: Duration,
) -> Result<Pass> {
    let what = format!("{cmd:?}");
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stderr(Stdio::from(file));
    let cpu_before = children_cpu_seconds();
    let (child, mut stdin, mut stdout) = spawn_client(cmd, stdio, deadline);
    let pid = child.id();
    let total = expected.len();
    let start = Instant::now();
    let (seconds, back, stdin) = thread::scope(|s| -> Result<(f64, Vec<u8>, _)> {
        let writer = s.spawn(move || -> std::io::Result<_> {
            for m in msgs {
                stdin.write_all(m)?;
            }
            // Kept open: km's memory is read before it sees end of input.
            Ok(stdin)
        });
        let reader = s.spawn(move || -> std::io::Result<(f64, Vec<u8>)> {
            let mut back = Vec::with_capacity(total);
            let mut buf = vec![0u8; 256 * 1024];
            while back.len() < total {
                let n = stdout.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            Ok((start.elapsed().as_secs_f64(), back))
        });
        let stdin = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?
            .context("writing to the relay")?;
        let (seconds, back) = reader
            .join()
            .map_err(|_| anyhow::anyhow!("reader panicked"))?
            .context("reading from the relay")?;
        Ok((seconds, back, stdin))
    })?;
    let peak_rss_kb = proc_status_kb(pid, "VmHWM");
    let busiest_thread_seconds = busiest_thread_seconds(pid);
    drop(stdin);
    let status = child.wait(&what, || format!("see {}", log.display()));
    let cpu_seconds = children_cpu_seconds() - cpu_before;
    if back != expected {
        bail!(
            "{what} returned {} bytes that differ from the {} sent (exit {status}); see {}",
            back.len(),
            total,
            log.display()
        );
    }
    Ok(Pass {
        seconds,
        peak_rss_kb,
        cpu_seconds,
        busiest_thread_seconds,
    })
}

/// Which stream a variant sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mix {
    /// The first round's mix (about 8 KB a line).
    Agent,
    /// 80–2000 B lines.
    Small,
}

impl Mix {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mix::Agent => "agent mix",
            Mix::Small => "small mix",
        }
    }

    /// The stream of `n` messages (agent) or of the small mix's equivalent in time.
    pub(crate) fn stream(self, quick: bool) -> Vec<Vec<u8>> {
        match (self, quick) {
            (Mix::Agent, false) => messages(10_000),
            (Mix::Agent, true) => messages(3000),
            (Mix::Small, false) => small_messages(100_000),
            (Mix::Small, true) => small_messages(30_000),
        }
    }
}

/// One way of relaying a stream: a command, the stdio it gets, the plugin set it loads (to
/// check after each run), and the baseline it is compared with.
pub(crate) struct Variant<'a> {
    pub(crate) label: String,
    pub(crate) make: Box<dyn Fn() -> Command + 'a>,
    pub(crate) stdio: ClientStdio,
    pub(crate) set: Option<String>,
    /// Index of the baseline variant (itself for a baseline).
    pub(crate) baseline: usize,
    /// The most this variant may take, as a multiple of its baseline.
    pub(crate) target: Option<f64>,
}

/// What the rounds gave one variant.
#[derive(Debug, Default, Clone)]
pub(crate) struct Runs {
    pub(crate) seconds: Vec<f64>,
    /// [`Pass::cpu_seconds`] of each run.
    pub(crate) cpu_seconds: Vec<f64>,
    /// [`Pass::busiest_thread_seconds`] of each run that had it.
    pub(crate) busiest_thread_seconds: Vec<f64>,
    pub(crate) peak_rss_kb: u64,
    /// Drops over all runs, and the last run's accounting.
    pub(crate) drops: u64,
    pub(crate) handed: Handed,
}

/// Runs every variant `reps` times, in turn.
pub(crate) fn rounds(
    env: &BenchEnv,
    variants: &[Variant<'_>],
    msgs: &[Vec<u8>],
    reps: usize,
    log_name: &str,
) -> Result<Vec<Runs>> {
    let expected: Vec<u8> = msgs.concat();
    let log = env.dir().join(log_name);
    let mut runs = vec![Runs::default(); variants.len()];
    for _ in 0..reps {
        for (v, r) in variants.iter().zip(&mut runs) {
            let p = pass_with((v.make)(), v.stdio, msgs, &expected, &log)
                .with_context(|| v.label.clone())?;
            r.seconds.push(p.seconds);
            r.cpu_seconds.push(p.cpu_seconds);
            r.busiest_thread_seconds.extend(p.busiest_thread_seconds);
            r.peak_rss_kb = r.peak_rss_kb.max(p.peak_rss_kb.unwrap_or(0));
            if let Some(set) = &v.set {
                let handed = env
                    .check_run(set)
                    .with_context(|| format!("{}: see {}", v.label, log.display()))?;
                r.drops += handed.drops();
                r.handed = handed;
            }
        }
    }
    Ok(runs)
}

/// The rows of `variants` after [`rounds`]: median rate, the median and spread of the per-round
/// ratios to the baseline, drops, and the target (not judged when a plugin dropped messages).
pub(crate) fn rows(
    section: &'static str,
    variants: &[Variant<'_>],
    runs: &[Runs],
    msgs: &[Vec<u8>],
    report: &mut Report,
) {
    let n = msgs.len();
    let mb = msgs.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    let rate = |s: f64| format!("{:.0} MB/s, {:.0} msg/s", mb / s, n as f64 / s);
    for (i, v) in variants.iter().enumerate() {
        if v.baseline == i {
            continue;
        }
        let base = &runs[v.baseline];
        let mut ratios: Vec<f64> = runs[i]
            .seconds
            .iter()
            .zip(&base.seconds)
            .map(|(t, b)| t / b)
            .collect();
        let ratio = median(&mut ratios);
        let (lo, hi) = (ratios[0], ratios[ratios.len() - 1]);
        let t = median(&mut runs[i].seconds.clone());
        let b = median(&mut base.seconds.clone());
        let mut value = rate(t);
        if v.set.is_some() {
            value.push_str(&format!(", drops {}", runs[i].drops));
        }
        if let Some(cpu) = cpu_floor(&runs[i], b, n) {
            value.push_str(&cpu);
        }
        if runs[i].peak_rss_kb > 0 {
            // km's own peak, so that what each plugin set holds shows beside its speed.
            value.push_str(&format!(
                ", peak RSS {:.1} MB",
                runs[i].peak_rss_kb as f64 / 1024.0
            ));
        }
        let row = Row {
            section,
            figure: v.label.clone(),
            value,
            baseline: format!(
                "{} {}{}; ratio range {lo:.2}-{hi:.2} over {} rounds",
                variants[v.baseline].label,
                rate(b),
                if base.cpu_seconds.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", CPU {:.2} us/msg",
                        median(&mut base.cpu_seconds.clone()) / n as f64 * 1e6
                    )
                },
                ratios.len()
            ),
            ratio: Some(ratio),
            target: v.target.map(|x| (format!("time <= {x}x"), ratio <= x)),
        };
        match &v.set {
            Some(_) => report.add_counted(row, runs[i].drops),
            None => report.add(row),
        }
    }
}

/// The CPU a variant's runs took per message (medians over the runs), and the lowest ratio to a
/// baseline of `baseline_seconds` that this much CPU allows on this machine: the total spread
/// over every core, or the busiest thread's alone, whichever is more. What a target below that
/// floor needs is less work per message, not better scheduling. No thread can take more CPU
/// than the time since km started, so the busiest thread's bound holds as it stands. The total
/// covers km and its server from start to exit: it includes the end of the session after the
/// last byte came back (what a lossless plugin still had queued, up to 8 192 messages), which the
/// wall clock does not count, and leaves out km-bench's own client, which shares the cores.
fn cpu_floor(runs: &Runs, baseline_seconds: f64, messages: usize) -> Option<String> {
    if runs.cpu_seconds.is_empty() || messages == 0 {
        return None;
    }
    let per_message = |s: f64| s / messages as f64 * 1e6;
    let cpu = median(&mut runs.cpu_seconds.clone());
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let busiest = (!runs.busiest_thread_seconds.is_empty())
        .then(|| median(&mut runs.busiest_thread_seconds.clone()));
    let floor = (cpu / cores as f64).max(busiest.unwrap_or(0.0)) / baseline_seconds;
    Some(format!(
        ", CPU {:.2} us/msg{} (at best {floor:.2}x on {cores} cores)",
        per_message(cpu),
        busiest.map_or(String::new(), |b| format!(
            ", busiest thread {:.2}",
            per_message(b)
        ))
    ))
}

/// `sh -c 'cat | cat'`: the plain byte relay (one `cat` per direction) that relay figures are
/// compared with.
pub(crate) fn cat_cat(env: &BenchEnv) -> Command {
    let mut base = env.command(std::path::Path::new("sh"));
    base.args(["-c", "cat | cat"]);
    base
}

/// The agent mix of the sections that time a relay with and without what they measure: its
/// messages, and how many passes each command gets.
pub(crate) struct Stream {
    pub(crate) msgs: Vec<Vec<u8>>,
    expected: Vec<u8>,
    pub(crate) passes: usize,
}

impl Stream {
    /// The agent mix at the size `options` ask for.
    pub(crate) fn agent(options: &Options) -> Stream {
        let msgs = Mix::Agent.stream(options.quick);
        Stream {
            expected: msgs.concat(),
            msgs,
            passes: options.passes(),
        }
    }

    /// Its size in MB.
    pub(crate) fn mb(&self) -> f64 {
        self.expected.len() as f64 / 1e6
    }

    /// The rate of one pass that took `seconds`: `N MB/s, N msg/s`.
    pub(crate) fn rate(&self, seconds: f64) -> String {
        format!(
            "{:.0} MB/s, {:.0} msg/s",
            self.mb() / seconds,
            self.msgs.len() as f64 / seconds
        )
    }

    /// Sends the stream through each of `commands` in turn, [`Stream::passes`] times (so that
    /// the machine's noise falls on all of them alike), checking what comes back; the median
    /// time of each. Their stderr goes to `log`.
    pub(crate) fn medians<const N: usize>(
        &self,
        commands: [&dyn Fn() -> Command; N],
        log: &std::path::Path,
    ) -> Result<[f64; N]> {
        let mut times: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
        for _ in 0..self.passes {
            for (make, t) in commands.iter().zip(&mut times) {
                t.push(pass(make(), &self.msgs, &self.expected, log)?.seconds);
            }
        }
        Ok(times.map(|mut t| median(&mut t)))
    }
}

/// The variants `KM_BENCH_RELAY_VARIANTS` (comma-separated parts of labels) asks for, with the
/// baselines they are compared with; all of them when it is unset. For chasing one plugin's
/// figure without the hour every variant takes.
fn narrowed(variants: Vec<Variant<'_>>) -> Vec<Variant<'_>> {
    let Ok(wanted) = std::env::var("KM_BENCH_RELAY_VARIANTS") else {
        return variants;
    };
    let parts: Vec<&str> = wanted.split(',').filter(|p| !p.is_empty()).collect();
    let keep: Vec<bool> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| v.baseline == i || parts.iter().any(|p| v.label.contains(p)))
        .collect();
    // Baselines come first and are kept, so their new index is their count before them.
    let new_index = |old: usize| keep[..old].iter().filter(|k| **k).count();
    variants
        .into_iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(mut v, _)| {
            v.baseline = new_index(v.baseline);
            v
        })
        .collect()
}

/// Runs the throughput section: both mixes (or the one `KM_BENCH_RELAY_MIX` names: `agent`,
/// `small`), every variant (or those [`narrowed`] keeps), interleaved.
pub(crate) fn run(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let reps = options.passes();
    // The peak of the runs with every bundled plugin, and the mixes they ran: none when
    // `KM_BENCH_RELAY_VARIANTS` left them out or no peak was read (no row then, rather than
    // 0 MB "met").
    let mut rss: Option<u64> = None;
    let mut rss_mixes: Vec<&str> = Vec::new();
    let mixes = match std::env::var("KM_BENCH_RELAY_MIX").as_deref() {
        Ok("agent") => vec![Mix::Agent],
        Ok("small") => vec![Mix::Small],
        _ => vec![Mix::Agent, Mix::Small],
    };
    for mix in mixes {
        let msgs = mix.stream(options.quick);
        let mb = msgs.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
        eprintln!(
            "relay, {}: {} messages, {mb:.1} MB, {reps} rounds",
            mix.label(),
            msgs.len()
        );
        let km = |set: Option<&'static str>, lossless: bool| -> Box<dyn Fn() -> Command + '_> {
            Box::new(move || {
                let flags: &[&str] = if lossless { &["--lossless"] } else { &[] };
                env.km_monitor_flags(set.map(|s| env.set_dir(s)), flags, &["cat"])
            })
        };
        let label = |what: &str| format!("{}, {what}", mix.label());
        let pipes = ClientStdio::Pipes;
        let sockets = ClientStdio::SocketPairs;
        let mut variants = vec![
            Variant {
                label: label("cat|cat"),
                make: Box::new(move || cat_cat(env)),
                stdio: pipes,
                set: None,
                baseline: 0,
                target: None,
            },
            Variant {
                label: label("cat|cat on socketpairs"),
                make: Box::new(move || cat_cat(env)),
                stdio: sockets,
                set: None,
                baseline: 1,
                target: None,
            },
            Variant {
                label: label("no plugins"),
                make: km(None, false),
                stdio: pipes,
                set: None,
                baseline: 0,
                target: Some(1.0),
            },
            Variant {
                label: label("no plugins, socketpair stdio"),
                make: km(None, false),
                stdio: sockets,
                set: None,
                baseline: 1,
                target: None,
            },
            Variant {
                label: label("every bundled observer"),
                make: km(Some("observers"), false),
                stdio: pipes,
                set: Some("observers".into()),
                baseline: 0,
                target: Some(1.5),
            },
            Variant {
                label: label("every bundled observer, --lossless"),
                make: km(Some("observers"), true),
                stdio: pipes,
                set: Some("observers".into()),
                baseline: 0,
                target: Some(1.5),
            },
            Variant {
                label: label("every bundled observer but compliance-reporting, --lossless"),
                make: km(Some(LIGHTER_OBSERVERS), true),
                stdio: pipes,
                set: Some(LIGHTER_OBSERVERS.into()),
                baseline: 0,
                target: None,
            },
            Variant {
                label: label("every bundled observer, socketpair stdio"),
                make: km(Some("observers"), false),
                stdio: sockets,
                set: Some("observers".into()),
                baseline: 1,
                target: None,
            },
            Variant {
                label: label("every bundled plugin (interceptors too)"),
                make: km(Some("bundled"), false),
                stdio: pipes,
                set: Some("bundled".into()),
                baseline: 0,
                target: None,
            },
        ];
        if mix == Mix::Small {
            // Each plugin alone, and the no-op test plugin: what framing and queueing cost by
            // themselves, and what each plugin adds.
            variants.push(Variant {
                label: label("test-noop alone"),
                make: km(Some("only-test-noop"), false),
                stdio: pipes,
                set: None,
                baseline: 0,
                target: None,
            });
            for b in &env.bundled {
                let set: &'static str = Box::leak(format!("only-{}", b.name()).into_boxed_str());
                variants.push(Variant {
                    label: label(&format!("{} alone", b.name())),
                    make: km(Some(set), false),
                    stdio: pipes,
                    set: Some(set.to_owned()),
                    baseline: 0,
                    target: None,
                });
            }
        }
        let variants = narrowed(variants);
        if variants.len() <= 2 {
            continue;
        }
        let runs = rounds(env, &variants, &msgs, reps, "relay-stderr.log")?;
        for (v, r) in variants.iter().zip(&runs) {
            if v.set.as_deref() == Some("bundled") && r.peak_rss_kb > 0 {
                rss = Some(rss.unwrap_or(0).max(r.peak_rss_kb));
                if !rss_mixes.contains(&mix.label()) {
                    rss_mixes.push(mix.label());
                }
            }
            if v.set.is_some() {
                eprintln!("  {}: {}", v.label, r.handed.describe());
            }
        }
        rows("relay", &variants, &runs, &msgs, report);
    }
    if let Some(rss) = rss {
        let mb = rss as f64 / 1024.0;
        report.add(Row {
            section: "memory",
            figure: format!(
                "km peak RSS (VmHWM), every bundled plugin, {}",
                rss_mixes.join(" and ")
            ),
            value: format!("{mb:.1} MB"),
            baseline: String::new(),
            ratio: None,
            target: Some(("<= 30 MB".to_owned(), mb <= 30.0)),
        });
    }
    Ok(())
}

/// Scaling: the small mix through km with 1, 5 and 20 test-noop copies loaded, beside cat|cat;
/// the figure is km's time with 20 against its time with one.
pub(crate) fn scaling(env: &BenchEnv, options: &Options, report: &mut Report) -> Result<()> {
    let reps = options.passes();
    let msgs = Mix::Small.stream(options.quick);
    eprintln!(
        "scaling: {} messages, 1/5/{MAX_NOOPS} plugins, {reps} rounds",
        msgs.len()
    );
    let mut variants = vec![Variant {
        label: "small mix, cat|cat".to_owned(),
        make: Box::new(move || cat_cat(env)),
        stdio: ClientStdio::Pipes,
        set: None,
        baseline: 0,
        target: None,
    }];
    for n in [1, 5, MAX_NOOPS] {
        let set: &'static str = Box::leak(format!("noop-{n}").into_boxed_str());
        variants.push(Variant {
            label: format!("small mix, {n} test-noop plugins"),
            make: Box::new(move || env.km_monitor_in(Some(env.set_dir(set)), &["cat"])),
            stdio: ClientStdio::Pipes,
            set: Some(set.to_owned()),
            baseline: 0,
            target: None,
        });
    }
    let runs = rounds(env, &variants, &msgs, reps, "scaling-stderr.log")?;
    rows("scaling", &variants, &runs, &msgs, report);
    let mut per_round: Vec<f64> = runs[3]
        .seconds
        .iter()
        .zip(&runs[1].seconds)
        .map(|(t20, t1)| t20 / t1)
        .collect();
    let ratio = median(&mut per_round);
    let (cpu20, cpu1) = (
        median(&mut runs[3].cpu_seconds.clone()),
        median(&mut runs[1].cpu_seconds.clone()),
    );
    let drops = runs[1].drops + runs[3].drops;
    report.add_counted(
        Row {
            section: "scaling",
            figure: format!("{MAX_NOOPS} plugins against 1: km's relay time"),
            value: format!(
                "{:.3} s against {:.3} s; CPU {:.2}x ({cpu20:.2} against {cpu1:.2} s)",
                median(&mut runs[3].seconds.clone()),
                median(&mut runs[1].seconds.clone()),
                cpu20 / cpu1,
            ),
            baseline: format!(
                "range {:.2}-{:.2} over {} rounds",
                per_round[0],
                per_round[per_round.len() - 1],
                per_round.len()
            ),
            ratio: Some(ratio),
            target: Some(("<= 2x".to_owned(), ratio <= 2.0)),
        },
        drops,
    );
    Ok(())
}
