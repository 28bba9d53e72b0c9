//! Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol: a
//! minimal CDP client on a websocket, page navigation, form actions, screenshots, and
//! axe-core (npm, pinned, installed under target/) run in the page.

use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// axe-core, pinned: a new release may add rules.
pub const AXE_VERSION: &str = "4.10.2";

pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
    /// The last document's HTTP status and headers (lower-case names).
    pub status: u16,
    pub headers: Value,
    loads: usize,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> &'static str {
    if Path::new("/usr/bin/chromium").exists() {
        "/usr/bin/chromium"
    } else {
        panic!("chromium is not installed: apt-get install -y chromium (scripts/test does)")
    }
}

impl Browser {
    pub fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            "--window-size=1200,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // Chromium's sandbox needs user namespaces, which root in a container lacks.
        if nix::unistd::geteuid().is_root() {
            cmd.arg("--no-sandbox");
        }
        let child = cmd.spawn().expect("start chromium");
        let port = wait_for_port(profile.path());
        let url = page_target(port);
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("CDP websocket");
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
            status: 0,
            headers: Value::Null,
            loads: 0,
        };
        b.call("Page.enable", json!({}));
        b.call("Network.enable", json!({}));
        b
    }

    /// One CDP command and its result; events read meanwhile are noted.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).unwrap();
        loop {
            let v = self.read();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn read(&mut self) -> Value {
        loop {
            let m = self.ws.read().expect("CDP read");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            match v["method"].as_str() {
                Some("Page.loadEventFired") => self.loads += 1,
                Some("Network.responseReceived") if v["params"]["type"] == "Document" => {
                    let r = &v["params"]["response"];
                    self.status = r["status"].as_u64().unwrap_or(0) as u16;
                    let mut h = serde_json::Map::new();
                    for (k, val) in r["headers"].as_object().into_iter().flatten() {
                        h.insert(k.to_ascii_lowercase(), val.clone());
                    }
                    self.headers = Value::Object(h);
                }
                _ => {}
            }
            return v;
        }
    }

    /// Runs `script` and waits for the page it leads to (a navigation or a form's answer).
    fn until_loaded(&mut self, method: &str, params: Value) {
        self.loads = 0;
        let r = self.call(method, params);
        assert!(r.get("exceptionDetails").is_none(), "{method}: {r}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.loads == 0 {
            assert!(Instant::now() < deadline, "no page loaded after {method}");
            self.read();
        }
    }

    pub fn open(&mut self, url: &str) {
        self.until_loaded("Page.navigate", json!({"url": url}));
    }

    /// Runs `script` in the page, which submits a form; waits for the answer.
    pub fn submit(&mut self, script: &str) {
        self.until_loaded(
            "Runtime.evaluate",
            json!({"expression": script, "userGesture": true}),
        );
    }

    /// The value of a JavaScript expression in the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// The rendered text of the page.
    pub fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn header(&self, name: &str) -> String {
        self.headers[name].as_str().unwrap_or_default().to_string()
    }

    pub fn cookies(&mut self, url: &str) -> Vec<Value> {
        let r = self.call("Network.getCookies", json!({"urls": [url]}));
        r["cookies"].as_array().cloned().unwrap_or_default()
    }

    /// A PNG of the page as shown, into `dir/name.png`.
    pub fn screenshot(&mut self, dir: &Path, name: &str) -> PathBuf {
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = data_encoding::BASE64
            .decode(r["data"].as_str().unwrap().as_bytes())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// axe-core's violations of impact serious or critical on the page: `id: targets`.
    pub fn axe_serious(&mut self, axe: &str) -> Vec<String> {
        self.call(
            "Runtime.evaluate",
            json!({"expression": axe, "returnByValue": true}),
        );
        let found = self.eval(
            "axe.run(document, {resultTypes: ['violations']}).then(r => JSON.stringify(\
             r.violations.map(v => ({id: v.id, impact: v.impact, \
             nodes: v.nodes.map(n => n.target.join(' '))}))))",
        );
        let found: Vec<Value> = serde_json::from_str(found.as_str().unwrap()).unwrap();
        found
            .iter()
            .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
            .map(|v| format!("{} ({}): {}", v["id"], v["impact"], v["nodes"]))
            .collect()
    }
}

/// Chromium writes its debugging port into the profile once it listens.
fn wait_for_port(profile: &Path) -> u16 {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse().ok())
        {
            return port;
        }
        assert!(Instant::now() < deadline, "chromium did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The websocket of the first page target.
fn page_target(port: u16) -> String {
    let addr = ([127, 0, 0, 1], port).into();
    let a = super::api::get(addr, "/json/list", None);
    let targets: Vec<Value> = serde_json::from_str(&a.body).unwrap();
    targets
        .iter()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .unwrap_or_else(|| panic!("no page target in {}", a.body))
        .to_string()
}

/// axe.min.js, installed once with npm under `target/axe-core-VERSION`.
pub fn axe_source() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(format!("axe-core-{AXE_VERSION}"));
    let file = root.join("node_modules/axe-core/axe.min.js");
    if !file.exists() {
        let ok = Command::new("npm")
            .args([
                "install",
                "--no-save",
                "--no-audit",
                "--no-fund",
                "--prefix",
            ])
            .arg(&root)
            .arg(format!("axe-core@{AXE_VERSION}"))
            .status()
            .expect("npm (Debian's npm package)");
        assert!(ok.success(), "npm install axe-core@{AXE_VERSION}");
    }
    std::fs::read_to_string(&file).unwrap()
}
