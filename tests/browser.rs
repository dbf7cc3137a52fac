//! The web page in a real browser: headless Chromium on WebGPU (SwiftShader
//! on a machine without a GPU), driven over WebDriver (chromedriver), the
//! page served by the test. A real mini-MIAS film and a full-size
//! CBIS-DDSM DICOM go in through the page's file input, as a reader's
//! would; their probability maps, read back from the page, must match
//! native `engine infer` on the same files. A file that is not an image
//! gets the page's message, and no request the page makes carries an
//! image. The kernel tests also run here, on the browser's WebGPU.
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One headless Chromium at a time: two SwiftShader instances on a 2-core
/// machine slow each other past the runner's timeouts.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// A mini-MIAS film (PGM), every pixel compared; a full-size CBIS-DDSM
/// DICOM (RLE, 2864 x 4432), every 97th pixel compared; and pydicom's
/// JPEG 2000 DICOM, whose header's spacing wins over the typed one in both:
/// (path under MAMMO_DATA, the pixel spacing typed into the page, the
/// stride).
const FILES: [(&str, &str, usize); 3] = [
    ("mias/mdb081.pgm", "0.2", 1),
    ("cbis-ddsm/1-130.dcm", "0.05", 97),
    ("dicom/MR_small_jp2klossless.dcm", "0.2", 1),
];

#[test]
#[cfg_attr(
    not(browser_tools),
    ignore = "needs the wasm32 target, wasm-bindgen-cli of Cargo.lock's version, chromium and chromium-driver (.ci/run installs them), found when building the tests"
)]
// One reason at a time: a second `ignore` would be an unused attribute.
#[cfg_attr(
    all(browser_tools, not(mammo_data)),
    ignore = "needs real data: set MAMMO_DATA when building the tests (see data/README.md)"
)]
fn the_page_maps_real_scans_like_native_infer_and_uploads_nothing() {
    let _one_browser = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = tempdir("engine-browser");
    let data = PathBuf::from(std::env::var_os("MAMMO_DATA").expect("MAMMO_DATA"));
    let site = build_site(root, &scratch);
    let requests = Arc::new(Mutex::new(Vec::new()));
    let site_url = serve(site, requests.clone());
    let browser = Browser::start();

    browser.open(&format!("{site_url}/index.html"));
    let ready = browser.run_async("window.engineApp.ready.then(done)");
    assert_eq!(ready, json!(true), "page: {}", browser.text("error"));
    browser.run("document.getElementById('tta').value = 'none';");
    for (file, spacing, stride) in FILES {
        page_matches_native(&browser, root, &scratch, &data.join(file), spacing, stride);
    }

    let text = scratch.join("notes.png");
    std::fs::write(&text, "not an image").unwrap();
    browser.choose_file(&text);
    browser.wait_for(
        "document.getElementById('error').textContent !== ''",
        Page::MayFail,
    );
    let error = browser.text("error");
    assert!(
        error.contains("notes.png") && error.contains("not an image"),
        "{error}"
    );

    let requests = requests.lock().unwrap().clone();
    for r in &requests {
        assert_eq!(r.method, "GET", "{r:?}");
        assert_eq!(r.body_bytes, 0, "{r:?}");
        assert!(
            ["mdb081", "1-130", "MR_small", "notes"]
                .iter()
                .all(|stem| !r.url.contains(stem)),
            "{r:?}"
        );
    }
    assert!(
        requests.iter().any(|r| r.url.ends_with(".wasm")),
        "{requests:?}"
    );
    std::fs::remove_dir_all(&scratch).ok();
}

/// `file` through the page's file input at `spacing` mm (for files whose
/// header declares none): its map, every `stride`-th pixel, must match
/// native `engine infer`'s within 1e-4.
fn page_matches_native(
    browser: &Browser,
    root: &Path,
    scratch: &Path,
    file: &Path,
    spacing: &str,
    stride: usize,
) {
    let native = native_map(root, scratch, file, spacing);
    browser.run(&format!(
        "document.getElementById('spacing').value = '{spacing}';"
    ));
    browser.choose_file(file);
    let stem = file.file_stem().unwrap().to_str().unwrap();
    browser.wait_for(
        &format!("window.engineApp.state.name === '{stem}' && window.engineApp.state.map !== null"),
        Page::MustNotFail,
    );
    let (len, map) = browser.read_map(stride);
    assert_eq!(len, native.len(), "{stem}: map size");
    let worst = map
        .iter()
        .zip(native.iter().step_by(stride))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-4,
        "{stem}: page and native maps differ by {worst}"
    );
    let score = browser.text("result");
    assert!(
        score.contains("Image score"),
        "{stem}: result line: {score}"
    );
}

#[test]
#[cfg_attr(
    not(browser_tools),
    ignore = "needs the wasm32 target, wasm-bindgen-cli of Cargo.lock's version, chromium and chromium-driver (.ci/run installs them), found when building the tests"
)]
fn the_kernels_match_their_cpu_references_on_webgpu_in_headless_chromium() {
    let _one_browser = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    // web/tests/kernels.rs, run by wasm-bindgen-test-runner (.cargo/config.toml)
    // with Chromium's flags from web/webdriver.json. The release profile and
    // the target folder of web/build.sh share the dependencies' build.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .current_dir(root.join("web"))
        .args(["test", "--release", "--target", "wasm32-unknown-unknown"])
        .args(["--test", "kernels"])
        .env("CARGO_TARGET_DIR", root.join("target/wasm-site"))
        .output()
        .expect("cargo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the kernel tests failed in the browser:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The runner must have run every test of the file, not found none.
    let source = std::fs::read_to_string(root.join("web/tests/kernels.rs")).unwrap();
    let tests = source.matches("#[wasm_bindgen_test]\n").count();
    let summary = format!("test result: ok. {tests} passed; 0 failed");
    assert!(tests >= 10 && stdout.contains(&summary), "{stdout}");
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// web/build.sh into `scratch/site`, in a target folder of its own (the
/// outer `cargo test` holds the workspace's).
fn build_site(root: &Path, scratch: &Path) -> PathBuf {
    let site = scratch.join("site");
    let out = Command::new("bash")
        .arg(root.join("web/build.sh"))
        .arg(&site)
        .env("CARGO_TARGET_DIR", root.join("target/wasm-site"))
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "web/build.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    site
}

/// `engine infer` on `film` with the page's settings; its float32 map.
fn native_map(root: &Path, scratch: &Path, film: &Path, spacing: &str) -> Vec<f32> {
    let out_dir = scratch.join("native");
    let out = Command::new(env!("CARGO_BIN_EXE_engine"))
        .current_dir(root)
        .args(["infer", "--checkpoint", "data/models/cbis-w025"])
        .args([
            "--pixel-spacing",
            spacing,
            "--tta",
            "none",
            "--npy",
            "--out",
        ])
        .arg(&out_dir)
        .arg(film)
        .output()
        .expect("engine runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stem = film.file_stem().unwrap().to_str().unwrap();
    let bytes = std::fs::read(out_dir.join(format!("{stem}_prob.npy"))).unwrap();
    npyz::NpyFile::new(&bytes[..])
        .unwrap()
        .into_vec::<f32>()
        .unwrap()
}

#[derive(Clone, Debug)]
struct Request {
    method: String,
    url: String,
    body_bytes: usize,
}

/// Serves `site` on a free local port, logging every request; the URL.
fn serve(site: PathBuf, log: Arc<Mutex<Vec<Request>>>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("a local port");
    let url = format!("http://{}", server.server_addr());
    std::thread::spawn(move || {
        for mut rq in server.incoming_requests() {
            let mut body = Vec::new();
            let _ = rq.as_reader().read_to_end(&mut body);
            let path = rq.url().split('?').next().unwrap_or("/").to_string();
            log.lock().unwrap().push(Request {
                method: rq.method().to_string(),
                url: rq.url().to_string(),
                body_bytes: body.len(),
            });
            let file = site.join(path.trim_start_matches('/'));
            let response = match std::fs::read(&file) {
                Ok(bytes) => {
                    let kind = match file.extension().and_then(|e| e.to_str()) {
                        Some("html") => "text/html",
                        Some("js") => "text/javascript",
                        Some("wasm") => "application/wasm",
                        Some("json") => "application/json",
                        _ => "application/octet-stream",
                    };
                    let header = tiny_http::Header::from_bytes("Content-Type", kind).unwrap();
                    tiny_http::Response::from_data(bytes).with_header(header)
                }
                Err(_) => {
                    tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404)
                }
            };
            let _ = rq.respond(response);
        }
    });
    url
}

/// Whether a wait expects the page to show an error.
#[derive(Clone, Copy, PartialEq)]
enum Page {
    MustNotFail,
    MayFail,
}

/// One headless Chromium session through chromedriver.
struct Browser {
    driver: Child,
    base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base).call();
        let _ = self.driver.kill();
    }
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let server = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while ureq::get(&format!("{server}/status")).call().is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver never answered"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu"],
            },
        }}});
        let session = post(&format!("{server}/session"), &caps);
        let id = session["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        let browser = Browser {
            driver,
            base: format!("{server}/session/{id}"),
        };
        post(
            &format!("{}/timeouts", browser.base),
            &json!({"script": 600_000}),
        );
        browser
    }

    fn open(&self, url: &str) {
        post(&format!("{}/url", self.base), &json!({"url": url}));
    }

    fn run(&self, script: &str) -> Value {
        post(
            &format!("{}/execute/sync", self.base),
            &json!({"script": script, "args": []}),
        )
    }

    /// Runs `script` with `done` bound to WebDriver's callback.
    fn run_async(&self, script: &str) -> Value {
        let script = format!("const done = arguments[arguments.length - 1]; {script};");
        post(
            &format!("{}/execute/async", self.base),
            &json!({"script": script, "args": []}),
        )
    }

    fn text(&self, id: &str) -> String {
        let v = self.run(&format!(
            "return document.getElementById('{id}').textContent"
        ));
        v.as_str().unwrap_or_default().to_string()
    }

    /// Chooses `path` in the page's file input, as a reader does.
    fn choose_file(&self, path: &Path) {
        let found = post(
            &format!("{}/element", self.base),
            &json!({"using": "css selector", "value": "#file"}),
        );
        let element = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("the file input")
            .to_string();
        post(
            &format!("{}/element/{element}/value", self.base),
            &json!({"text": path.to_str().unwrap()}),
        );
    }

    /// Waits (10 minutes at most) until `condition` holds; with
    /// `Page::MustNotFail` a page error ends the wait with that error.
    fn wait_for(&self, condition: &str, page: Page) {
        let started = Instant::now();
        loop {
            if self.run(&format!("return {condition}")) == json!(true) {
                return;
            }
            if page == Page::MustNotFail {
                let error = self.text("error");
                assert!(error.is_empty(), "page error: {error}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "timed out waiting for {condition}; status: {}",
                self.text("status")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The page's last map: its length and every `stride`-th value, in
    /// chunks (each a JSON array of numbers: f32 values survive the trip
    /// through doubles exactly).
    fn read_map(&self, stride: usize) -> (usize, Vec<f32>) {
        let len = self
            .run("return window.engineApp.state.map.length")
            .as_u64()
            .unwrap() as usize;
        let mut map = Vec::with_capacity(len / stride + 1);
        let chunk = stride << 18;
        for start in (0..len).step_by(chunk) {
            let end = (start + chunk).min(len);
            let values = self.run(&format!(
                "const m = window.engineApp.state.map, out = []; \
                 for (let i = {start}; i < {end}; i += {stride}) out.push(m[i]); \
                 return out;"
            ));
            let values = values.as_array().unwrap().iter();
            map.extend(values.map(|v| v.as_f64().unwrap() as f32));
        }
        (len, map)
    }
}

/// POSTs JSON to WebDriver; its `value`, or a failure with its error.
fn post(url: &str, body: &Value) -> Value {
    let mut response = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(body)
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let reply: Value = response
        .body_mut()
        .read_json()
        .expect("JSON from chromedriver");
    assert!(response.status().is_success(), "{url}: {}", reply["value"]);
    reply["value"].clone()
}
