//! A real headless Chromium for the admin center's tests, driven over WebDriver
//! (fantoccini) through a `chromedriver` this test starts on a free port. Missing
//! Chromium or chromedriver fails the test, naming the packages to install.

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// How long a page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

pub struct Browser {
    pub client: Client,
    /// The admin center's origin, e.g. `http://127.0.0.1:8432`.
    pub base: String,
    driver: tokio::process::Child,
}

/// One browser at a time: the machine running the suite may have two cores.
pub static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Browser {
    pub async fn start(base: &str) -> Browser {
        let port = free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // A process group of its own, which the Chromium it starts joins: dropping the
            // browser ends the group, so a failing test leaves no browser behind.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): install Debian's `chromium` and \
                     `chromium-driver` (.ci/run does)"
                )
            });
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                // Root in CI: Chromium's sandbox needs a user namespace it may not get.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,900"]
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot start headless Chromium through chromedriver: {e}"));
        Browser {
            client,
            base: base.to_owned(),
            driver,
        }
    }

    pub async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path of the page shown now.
    pub async fn path(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("url")
            .path()
            .to_owned()
    }

    /// Signs in on `/login` with `key` and lands on the requests table.
    pub async fn sign_in(&self, key: &str) {
        self.goto("/login").await;
        self.fill("#api_key", key).await;
        self.click("button[type=submit]").await;
        self.wait_text("h1", "Requests").await;
    }

    pub async fn sign_out(&self) {
        self.click("form.signout button").await;
        self.wait_text("h1", "Sign in").await;
    }

    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => panic!("no `{css}` on {}: {e}", self.path().await),
        }
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }

    /// Waits (bounded) until the first `css` element's text contains `wanted`.
    pub async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let text = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if text.contains(wanted) {
                return text;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "`{css}` never showed `{wanted}` on {} (last: {text:?})",
                    self.path().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The session cookie, for fetching what the browser would (a download) or forging
    /// what it would not.
    pub async fn session_cookie(&self) -> String {
        let cookie = self
            .client
            .get_named_cookie("lockbox_session")
            .await
            .expect("signed in: a session cookie");
        format!("lockbox_session={}", cookie.value())
    }

    /// Closes the browser session; dropping the `Browser` then ends chromedriver.
    pub async fn quit(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let Some(pid) = self.driver.id().and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        // SAFETY: kill(2) with a negative pid signals the process group chromedriver leads
        // (made by `process_group(0)` above); it touches no memory of this process.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}
