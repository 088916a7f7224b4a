//! The access log: lines formatted on the worker, written by a dedicated thread.

use super::*;
// ---- access log ----

pub(super) struct AccessLog {
    /// Off: no line is formatted (a reload may turn it on or off).
    on: std::sync::atomic::AtomicBool,
    /// `AccessLogFormat` as a number (0 combined, 1 json), which a reload may change.
    format: std::sync::atomic::AtomicU8,
    /// The file, reopened at this path on SIGUSR1 (logrotate); `None`: stdout.
    path: std::sync::Mutex<Option<String>>,
    /// The writer's queue, made the first time the log is on: its 65,536 slots (a few MB)
    /// are allocated and written when it is made, which a process without a log skips.
    tx: OnceCell<std::sync::mpsc::SyncSender<Msg>>,
}

/// What the writer thread takes: a line, or the file to write the next ones to.
pub(super) enum Msg {
    Line(String),
    Reopened(Box<dyn std::io::Write + Send>),
}

/// Where an access log spec writes: its file (appended to), or stdout.
pub(super) fn output(path: Option<&str>) -> std::io::Result<Box<dyn std::io::Write + Send>> {
    match path {
        None => Ok(Box::new(std::io::stdout())),
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(|f| Box::new(f) as Box<dyn std::io::Write + Send>)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{p}: {e}"))),
    }
}

fn format_code(f: AccessLogFormat) -> u8 {
    match f {
        AccessLogFormat::Combined => 0,
        AccessLogFormat::Json => 1,
    }
}

/// Lines the writer may lag behind before new ones are dropped.
pub(super) const ACCESS_LOG_QUEUE: usize = 65_536;

impl AccessLog {
    /// The access log of `spec` (off without one), its output opened now.
    pub(super) fn open(spec: Option<&AccessLogSpec>) -> std::io::Result<AccessLog> {
        let log = AccessLog {
            on: std::sync::atomic::AtomicBool::new(false),
            format: std::sync::atomic::AtomicU8::new(0),
            path: std::sync::Mutex::new(None),
            tx: OnceCell::new(),
        };
        if let Some(s) = spec {
            let out = output(s.path.as_deref())?;
            log.set(Some(s), Some(out));
        }
        Ok(log)
    }

    /// The writer's queue; the first call makes it, with `out` as the writer's file. The
    /// writer thread starts on first use, after a daemon fork (threads do not survive fork;
    /// the open file does).
    fn queue(
        &self,
        out: Box<dyn std::io::Write + Send>,
    ) -> Result<&std::sync::mpsc::SyncSender<Msg>, Box<dyn std::io::Write + Send>> {
        let mut out = Some(out);
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(ACCESS_LOG_QUEUE);
            let parts = out.take().map(|o| (rx, o));
            WRITER.get_or_init(|| std::sync::Mutex::new(parts));
            tx
        });
        match out {
            // not made here: the caller switches the writer to it
            Some(o) => Err(o),
            None => Ok(tx),
        }
    }

    #[inline]
    pub(super) fn on(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn write(&self, line: &Line) {
        start_writer();
        let mut s = String::with_capacity(256);
        match self.format.load(std::sync::atomic::Ordering::Relaxed) {
            0 => line.combined(&mut s),
            _ => line.json(&mut s),
        }
        s.push('\n');
        let sent = self.tx.get().map(|tx| tx.try_send(Msg::Line(s)));
        if !matches!(sent, Some(Ok(()))) {
            ACCESS_LOG_DROPPED.inc();
        }
    }

    /// Open the file at its path anew (logrotate moved the old one away); the writer
    /// switches to it after the lines queued before. No-op on stdout or when off.
    pub(super) fn reopen(&self) -> std::io::Result<()> {
        let path = self.path.lock().map(|p| p.clone()).unwrap_or_default();
        match path {
            Some(p) if self.on() => self.switch_to(output(Some(&p))?),
            _ => Ok(()),
        }
    }

    /// A reload's access log: `out` (opened by the caller, the reload's fallible part) when
    /// the output changes.
    pub(super) fn set(
        &self,
        spec: Option<&AccessLogSpec>,
        out: Option<Box<dyn std::io::Write + Send>>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(out) = out {
            if let Err(out) = self.queue(out) {
                if let Err(e) = self.switch_to(out) {
                    log::error!("access log: {e}");
                }
            }
        }
        if let Ok(mut p) = self.path.lock() {
            *p = spec.and_then(|s| s.path.clone());
        }
        if let Some(s) = spec {
            self.format.store(format_code(s.format), Relaxed);
        }
        self.on.store(spec.is_some(), Relaxed);
    }

    fn switch_to(&self, out: Box<dyn std::io::Write + Send>) -> std::io::Result<()> {
        let Some(tx) = self.tx.get() else {
            return Err(std::io::Error::other("the access log has no writer"));
        };
        start_writer();
        // waits only while the queue is full, which the writer is emptying
        tx.send(Msg::Reopened(out))
            .map_err(|_| std::io::Error::other("the access log writer is gone"))
    }
}

type WriterParts = (
    std::sync::mpsc::Receiver<Msg>,
    Box<dyn std::io::Write + Send>,
);
pub(super) static WRITER: OnceCell<std::sync::Mutex<Option<WriterParts>>> = OnceCell::new();
pub(super) static WRITER_STARTED: OnceCell<()> = OnceCell::new();

pub(super) fn start_writer() {
    WRITER_STARTED.get_or_init(|| {
        let parts = WRITER
            .get()
            .and_then(|m| m.lock().ok().and_then(|mut g| g.take()));
        if let Some((rx, out)) = parts {
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || writer_loop(rx, out));
            if let Err(e) = spawned {
                log::error!("access log: cannot start the writer thread: {e}");
            }
        }
    });
}

pub(super) fn writer_loop(rx: std::sync::mpsc::Receiver<Msg>, out: Box<dyn std::io::Write + Send>) {
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, out);
    // Block for a line, then take whatever else is queued, and flush once the queue is empty:
    // one write(2) per burst, and no line waits in the buffer while the proxy is idle.
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Line(line) => {
                    let _ = w.write_all(line.as_bytes());
                }
                Msg::Reopened(out) => {
                    if let Err(e) = w.flush() {
                        log::error!("access log: write failed: {e}");
                    }
                    w = std::io::BufWriter::with_capacity(64 * 1024, out);
                    log::info!("access log: reopened");
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = w.flush() {
            log::error!("access log: write failed: {e}");
        }
    }
}

pub(super) struct Line<'a> {
    pub(super) req: ReqView<'a>,
    pub(super) m: &'a RouteMetrics,
    pub(super) backend: Option<&'a str>,
    pub(super) status: u16,
    pub(super) bytes_out: usize,
    pub(super) took: Duration,
    pub(super) connect: Option<Duration>,
    pub(super) cache: &'static str,
    /// With tracing on, the request's trace.
    pub(super) trace: Option<&'a tracing::TraceCtx>,
}

impl Line<'_> {
    fn client(&self) -> String {
        self.req
            .client
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "-".into())
    }

    /// nginx's `combined`, then key=value fields for what it lacks.
    fn combined(&self, s: &mut String) {
        let req = &self.req;
        let q = |v: &str| v.replace('"', "\\x22");
        let _ = write!(
            s,
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" route={} upstream={} backend={} duration={:.6} upstream_connect={} cache={} trace_id={}",
            self.client(),
            clf_time(std::time::SystemTime::now()),
            req.method,
            req.uri,
            req.version,
            self.status,
            self.bytes_out,
            q(req.referer),
            q(req.user_agent),
            self.m.route,
            self.m.upstream,
            self.backend.unwrap_or("-"),
            self.took.as_secs_f64(),
            self.connect
                .map(|d| format!("{:.6}", d.as_secs_f64()))
                .unwrap_or_else(|| "-".into()),
            self.cache,
            self.trace
                .map(|t| t.trace_hex())
                .unwrap_or_else(|| "-".into()),
        );
    }

    fn json(&self, s: &mut String) {
        let req = &self.req;
        let v = serde_json::json!({
            "time": rfc3339(std::time::SystemTime::now()),
            "client": self.client(),
            "method": req.method,
            "uri": req.uri,
            "version": req.version,
            "host": req.host,
            "status": self.status,
            "bytes_sent": self.bytes_out,
            "bytes_received": req.bytes_in,
            "duration": self.took.as_secs_f64(),
            "upstream_connect": self.connect.map(|d| d.as_secs_f64()),
            "route": self.m.route,
            "upstream": self.m.upstream,
            "backend": self.backend,
            "cache": self.cache,
            "trace_id": self.trace.map(|t| t.trace_hex()),
            "referer": req.referer,
            "user_agent": req.user_agent,
        });
        s.push_str(&v.to_string());
    }
}

/// (year, month, day, hour, minute, second) in UTC.
pub(super) fn civil(t: std::time::SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis(),
    )
}

/// `10/Oct/2000:13:55:36 +0000`
pub fn clf_time(t: std::time::SystemTime) -> String {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = civil(t);
    format!(
        "{d:02}/{}/{y}:{h:02}:{mi:02}:{s:02} +0000",
        MON[(mo as usize).saturating_sub(1) % 12]
    )
}

/// `2000-10-10T13:55:36.123Z`
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = civil(t);
    format!("{y}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}
