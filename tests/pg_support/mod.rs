//! A private PostgreSQL (Debian's `postgresql` package, 15) for tests: `initdb` into a
//! temporary directory, `pg_ctl start` on a loopback port (35432-35499), a fresh database per
//! test. Never the system cluster. As root the server runs as the `postgres` user (initdb
//! refuses root). A watchdog stops the server and removes its directory when the test process
//! exits, however it exits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Ports the PostgreSQL tests may use.
const PORTS: std::ops::RangeInclusive<u16> = 35432..=35499;

/// One PostgreSQL server.
pub struct Pg {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    databases: AtomicUsize,
}

fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let preferred = Path::new("/usr/lib/postgresql/15/bin");
    if preferred.join("initdb").exists() {
        return preferred.to_owned();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .filter(|b| b.join("initdb").exists())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): \
             `apt-get install postgresql` (scripts/test does), or set PG_BIN"
            )
        })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…` as the `postgres` user when we are root, else as ourselves.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Pg {
    /// A server for this test alone, stopped when dropped.
    pub fn start() -> Pg {
        let bin = bin_dir();
        let dir = std::env::temp_dir().join(format!(
            "callverify-pg-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&dir);
                    c
                },
                "chown",
            )
            .unwrap();
        }
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(initdb, "initdb").unwrap();
        // Stops the server and removes the directory once this process is gone.
        let watchdog = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D '{data}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            stop = if is_root() {
                format!("runuser -u postgres -- '{}'", bin.join("pg_ctl").display())
            } else {
                format!("'{}'", bin.join("pg_ctl").display())
            },
            data = dir.join("data").display(),
            dir = dir.display(),
        );
        // `setsid -f` forks the watchdog into its own session and returns at once: it
        // outlives this process by design.
        let started = Command::new("setsid")
            .args(["-f", "sh", "-c", &watchdog])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("watchdog");
        assert!(started.success(), "cannot start the PostgreSQL watchdog");
        let mut pg = Pg {
            dir,
            bin,
            port: 0,
            databases: AtomicUsize::new(0),
        };
        // Start on the first free port, spreading processes over the range.
        let span = (PORTS.end() - PORTS.start() + 1) as u32;
        let offset = std::process::id() % span;
        let mut last = String::new();
        for i in 0..span {
            let port = PORTS.start() + ((offset + i) % span) as u16;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                continue;
            }
            pg.port = port;
            match pg.try_start() {
                Ok(()) => return pg,
                Err(e) => last = e,
            }
        }
        panic!("no PostgreSQL port free in {PORTS:?}: {last}");
    }

    /// One server for every test of this process (never stopped by a test; the watchdog
    /// stops it when the process ends).
    pub fn shared() -> &'static Pg {
        static SHARED: OnceLock<Pg> = OnceLock::new();
        SHARED.get_or_init(Pg::start)
    }

    fn try_start(&self) -> Result<(), String> {
        let mut c = as_server_user(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 \
                 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
                self.port,
                self.dir.display()
            ))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]);
        run(c, "pg_ctl start")
    }

    /// Stops the server at once (as a crash or a restart would: connections are cut).
    pub fn stop(&self) {
        let mut c = as_server_user(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"]);
        run(c, "pg_ctl stop").unwrap();
    }

    /// Starts it again on the same port.
    pub fn start_again(&self) {
        self.try_start().unwrap();
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The URL of the maintenance database.
    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A new, empty database; its URL.
    pub async fn database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("cv_{n}_{}", hex::encode(rand::random::<[u8; 4]>()));
        let (client, connection) =
            tokio_postgres::connect(&self.admin_url(), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("cannot reach the test PostgreSQL: {e}\n{}", self.log())
                });
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Waits until the server accepts connections (after `start_again`).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if tokio_postgres::connect(&self.admin_url(), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let mut c = as_server_user(&self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = run(c, "pg_ctl stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
