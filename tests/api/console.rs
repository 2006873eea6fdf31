//! The web console over plain HTTP, as an attacker's tools see it: sign-in links (single use,
//! bounded by the key that minted them), the session cookie, CSRF and Origin checks on every
//! post, scopes and tenancy enforced by the server, and every way a session ends.
//! (tests/api/console_browser.rs drives the same pages in Chromium.)

use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::harness::{Backend, Harness};

/// A browser without JavaScript: keeps the session cookie, follows nothing by itself.
pub struct Visitor {
    http: reqwest::Client,
    pub base: String,
    pub cookie: Option<String>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    pub fn location(&self) -> &str {
        self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The anti-forgery token of the page's forms.
    pub fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").expect("the page has a form") + 19;
        self.body[at..].split('"').next().unwrap().to_string()
    }
}

impl Visitor {
    pub fn new(base: &str) -> Visitor {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Visitor { http, base: base.to_string(), cookie: None }
    }

    async fn page(&mut self, req: reqwest::RequestBuilder) -> Page {
        let req = match &self.cookie {
            Some(c) => req.header(header::COOKIE, format!("cw_console={c}")),
            None => req,
        };
        let response = req.send().await.unwrap();
        if let Some(set) = response.headers().get(header::SET_COOKIE) {
            let value = set.to_str().unwrap().split(';').next().unwrap().trim_start_matches("cw_console=");
            self.cookie = Some(value.to_string()).filter(|v| !v.is_empty());
        }
        Page { status: response.status(), headers: response.headers().clone(), body: response.text().await.unwrap() }
    }

    pub async fn open(&mut self, url: &str) -> Page {
        let req = self.http.get(url);
        self.page(req).await
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let req = self.http.get(format!("{}{path}", self.base));
        self.page(req).await
    }

    /// Posts a form as a page of the console would: same origin, with the session's token.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.get("/console/events").await.csrf();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        let origin = self.base.clone();
        self.post_as(path, &all, &[("origin", &origin)]).await
    }

    /// Posts exactly `fields` with exactly `headers` (a forger's post).
    pub async fn post_as(&mut self, path: &str, fields: &[(&str, &str)], headers: &[(&str, &str)]) -> Page {
        let mut req = self.http.post(format!("{}{path}", self.base)).form(fields);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.page(req).await
    }
}

/// Mints a sign-in link with `key` through the API (`CreateConsoleLink` over HTTP/JSON).
pub async fn mint(base: &str, key: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/consoleLinks"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

/// A visitor signed in with a link minted by `key` for `scopes`.
pub async fn signed_in(h: &Harness, key: &str, scopes: &[&str]) -> Visitor {
    let base = format!("http://{}", h.addr());
    let (status, link) = mint(&base, key, json!({"scopes": scopes})).await;
    assert_eq!(status, StatusCode::OK, "{link}");
    let mut v = Visitor::new(&base);
    let page = v.open(link["url"].as_str().unwrap()).await;
    assert_eq!((page.status, page.location()), (StatusCode::SEE_OTHER, "/console"), "{}", page.body);
    v
}

async fn key_count(h: &Harness) -> i64 {
    h.count("api_keys").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_signs_in_once_with_a_strict_http_only_cookie_and_hardened_pages() {
    let h = Harness::start(Backend::Sqlite).await;
    let base = format!("http://{}", h.addr());
    let (status, link) = mint(&base, &h.key, json!({"scopes": ["webhooks:write"], "ttl": "600s"})).await;
    assert_eq!(status, StatusCode::OK, "{link}");
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{base}/console/signin?token=cwl_")), "{url}");
    assert_eq!(link["scopes"], json!(["webhooks:write"]));

    let mut v = Visitor::new(&base);
    let opened = v.open(url).await;
    assert_eq!((opened.status, opened.location()), (StatusCode::SEE_OTHER, "/console"));
    let cookie = opened.headers[header::SET_COOKIE].to_str().unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(cookie.contains(part), "{part} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP without --console-secure-cookies: {cookie}");
    let token = url.split("token=").nth(1).unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM console_links WHERE token_hash = $1")
        .bind(token)
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0, "tokens are stored hashed");

    let overview = v.get("/console").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("Acme") && overview.body.contains("webhooks:write"), "{}", overview.body);
    assert!(overview.body.contains("Calls in the last 24 hours"), "the usage chart: {}", overview.body);
    let csp = overview.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(overview.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(overview.headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(overview.headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(overview.headers[header::CACHE_CONTROL], "no-store");
    assert!(overview.headers.contains_key("x-request-id"), "console answers carry a request id");

    // Used once: a second opening signs nothing in.
    let mut other = Visitor::new(&base);
    let again = other.open(url).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert!(other.cookie.is_none() && again.body.contains("has been used"), "{}", again.body);
    // Nor does a guess.
    let guess = other.get("/console/signin?token=cwl_0000").await;
    assert_eq!((guess.status, other.cookie.is_none()), (StatusCode::UNAUTHORIZED, true));
    // Without a session every page sends the browser to sign in.
    let anonymous = other.get("/console/keys").await;
    assert_eq!((anonymous.status, anonymous.location()), (StatusCode::SEE_OTHER, "/console/signin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_never_grant_more_than_the_key_that_mints_them() {
    let h = Harness::start(Backend::Sqlite).await;
    let base = format!("http://{}", h.addr());
    let reader = h.scoped_key(&["webhooks:read"]).await;
    let (status, e) = mint(&base, &reader, json!({"scopes": ["webhooks:write"]})).await;
    assert_eq!(
        (status, e["error"]["details"][0]["reason"].as_str()),
        (StatusCode::FORBIDDEN, Some("SCOPE_ESCALATION"))
    );
    let (status, e) = mint(&base, &reader, json!({"scopes": ["*"]})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    // Its own scopes by default.
    let (status, link) = mint(&base, &reader, json!({})).await;
    assert_eq!((status, &link["scopes"]), (StatusCode::OK, &json!(["webhooks:read"])));
    for (ttl, why) in [("172800s", "over 24 h"), ("1s", "under a minute")] {
        let (status, e) = mint(&base, &h.key, json!({"ttl": ttl})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{why}: {e}");
    }
    let (status, e) = mint(&base, &h.key, json!({"scopes": ["nonsense"]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let platform = h.platform_key().await;
    let (status, e) = mint(&base, &platform, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "platform keys have no organization to show: {e}");
    assert_eq!(h.count("console_links").await, 1, "only the valid request wrote a link");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outside_a_scope_sees_403_and_the_server_refuses_its_forged_post() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut v = signed_in(&h, &h.key, &["webhooks:read"]).await;
    let keys = v.get("/console/keys").await;
    assert_eq!(keys.status, StatusCode::FORBIDDEN, "{}", keys.body);
    assert!(keys.body.contains("SCOPE_MISSING"), "{}", keys.body);
    assert!(!v.get("/console").await.body.contains("href=\"/console/keys\""), "the navigation hides it too");
    let before = key_count(&h).await;
    // The hidden button's form, posted anyway with a valid token and origin.
    let forged = v.post("/console/keys", &[("label", "mine now"), ("scopes", "*")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
    assert_eq!(key_count(&h).await, before, "nothing was written");
    // The webhooks it may read are shown; changing them is refused.
    assert_eq!(v.get("/console/webhooks").await.status, StatusCode::OK);
    let create = v.post("/console/webhooks", &[("url", "https://example.com/hook")]).await;
    assert_eq!(create.status, StatusCode::FORBIDDEN, "{}", create.body);
    assert_eq!(h.count("webhook_endpoints").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused_and_write_nothing() {
    let h = Harness::start(Backend::Sqlite).await;
    let mut v = signed_in(&h, &h.key, &["*"]).await;
    let csrf = v.get("/console").await.csrf();
    let before = key_count(&h).await;
    let fields = [("csrf", csrf.as_str()), ("label", "x"), ("scopes", "users:read")];
    let attempts: [(&str, &[(&str, &str)]); 5] = [
        ("another site's form, with the cookie and even the token", &[("origin", "https://evil.example")]),
        ("a cross-site fetch without Origin", &[("sec-fetch-site", "cross-site")]),
        ("a look-alike origin", &[("origin", "http://127.0.0.1.evil.example")]),
        ("Origin null from a sandboxed frame", &[("origin", "null"), ("sec-fetch-site", "cross-site")]),
        ("Origin null with no word on the site", &[("origin", "null")]),
    ];
    for (what, headers) in attempts {
        let page = v.post_as("/console/keys", &fields, headers).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}: {}", page.body);
    }
    let origin = v.base.clone();
    for (what, fields) in [
        ("no token", vec![("label", "x"), ("scopes", "users:read")]),
        ("a wrong token", vec![("csrf", "0".repeat(64).leak() as &str), ("label", "x"), ("scopes", "users:read")]),
    ] {
        let page = v.post_as("/console/keys", &fields, &[("origin", &origin)]).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}: {}", page.body);
    }
    assert_eq!(key_count(&h).await, before, "nothing was written");
    // The same form from the console itself works.
    let ok = v.post("/console/keys", &[("label", "from the console"), ("scopes", "users:read")]).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert!(ok.body.contains("will not be shown again"));
    assert_eq!(key_count(&h).await, before + 1);
    // As the console's own pages post it: no referrer policy makes the browser send
    // `Origin: null`, and it says the request is same-origin.
    let csrf = v.get("/console").await.csrf();
    let same = v
        .post_as(
            "/console/keys",
            &[("csrf", csrf.as_str()), ("label", "same origin"), ("scopes", "users:read")],
            &[("origin", "null"), ("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.body);
    // A sign-in form posted from elsewhere (login CSRF) opens no session.
    let mut stranger = Visitor::new(&v.base);
    let page =
        stranger.post_as("/console/signin", &[("key", h.key.as_str())], &[("origin", "https://evil.example")]).await;
    assert_eq!((page.status, stranger.cookie.is_none()), (StatusCode::FORBIDDEN, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organizations_ids_are_not_found() {
    let h = Harness::start(Backend::Sqlite).await;
    let base = format!("http://{}", h.addr());
    let other = h.other_org("globex").await;
    let http = reqwest::Client::new();
    let hook: Value = http
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(&other)
        .json(&json!({"url": "https://globex.example/secret-hook"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hook_id = hook["webhook"]["id"].as_str().unwrap();
    let keys: Value =
        http.get(format!("{base}/v1/apiKeys")).bearer_auth(&other).send().await.unwrap().json().await.unwrap();
    let key_id = keys["api_keys"][0]["id"].as_str().unwrap();

    let mut v = signed_in(&h, &h.key, &["*"]).await;
    for path in [
        format!("/console/webhooks/{hook_id}"),
        format!("/console/webhooks/{hook_id}/delete"),
        format!("/console/keys/{key_id}"),
        format!("/console/keys/{key_id}/revoke"),
        "/console/deliveries/dlv_01jd3k5q9y8m2c4v6b7n0p1r2s".to_string(),
    ] {
        let page = v.get(&path).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}: {}", page.body);
        assert!(!page.body.contains("globex"), "{path} shows nothing of the other organization");
    }
    for (path, fields) in [
        (format!("/console/keys/{key_id}/revoke"), vec![]),
        (format!("/console/webhooks/{hook_id}/delete"), vec![]),
        (format!("/console/webhooks/{hook_id}/disable"), vec![]),
        (format!("/console/keys/{key_id}"), vec![("label", "pwned"), ("scopes", "*")]),
    ] {
        let page = v.post(&path, &fields).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}: {}", page.body);
    }
    let still: Value = http
        .get(format!("{base}/v1/webhooks/{hook_id}"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still["disabled"], false);
    let listed = v.get("/console/webhooks").await;
    assert!(!listed.body.contains("globex"), "{}", listed.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_a_key_and_every_way_a_session_ends() {
    let h = Harness::start(Backend::Sqlite).await;
    let base = format!("http://{}", h.addr());
    let origin = [("origin", base.as_str())];
    let mut v = Visitor::new(&base);
    let wrong = v.post_as("/console/signin", &[("key", &format!("sk_{}", "0".repeat(48)))], &origin).await;
    assert_eq!((wrong.status, v.cookie.is_none()), (StatusCode::UNAUTHORIZED, true));
    assert!(wrong.body.contains("KEY_UNKNOWN"), "{}", wrong.body);

    let key = h.scoped_key(&["webhooks:write", "keys:read"]).await;
    let signed = v.post_as("/console/signin", &[("key", &key)], &origin).await;
    assert_eq!((signed.status, signed.location()), (StatusCode::SEE_OTHER, "/console"), "{}", signed.body);
    let overview = v.get("/console").await;
    assert!(
        overview.body.contains("webhooks:write, keys:read") && overview.body.contains("key sk_"),
        "{}",
        overview.body
    );
    assert!(!overview.body.contains(&key), "the key is never shown back");

    // Idle for 31 minutes: ended (the harness clock, no sleeping).
    h.clock.advance(31 * 60_000);
    let idle = v.get("/console").await;
    assert_eq!((idle.status, idle.location()), (StatusCode::SEE_OTHER, "/console/signin?ended=1"));

    // In use, but 12 hours after sign-in: ended.
    let mut v = Visitor::new(&base);
    v.post_as("/console/signin", &[("key", &key)], &origin).await;
    let mut used_for = 0;
    let ended = loop {
        h.clock.advance(29 * 60_000);
        used_for += 29;
        let page = v.get("/console").await;
        if page.status != StatusCode::OK {
            break page;
        }
    };
    assert_eq!(ended.location(), "/console/signin?ended=1", "the absolute lifetime");
    assert!((12 * 60..12 * 60 + 29).contains(&used_for), "ended after {used_for} minutes of use");

    // Signing out ends the session on the server: the old cookie is worth nothing.
    let mut v = Visitor::new(&base);
    v.post_as("/console/signin", &[("key", &key)], &origin).await;
    let cookie = v.cookie.clone();
    let out = v.post("/console/signout", &[]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    v.cookie = cookie;
    assert_eq!(v.get("/console").await.status, StatusCode::SEE_OTHER);

    // Revoking the key behind a session ends it.
    let mut v = Visitor::new(&base);
    v.post_as("/console/signin", &[("key", &key)], &origin).await;
    assert_eq!(v.get("/console").await.status, StatusCode::OK);
    let key_id: String = sqlx::query_scalar("SELECT id FROM api_keys WHERE secret_hash = $1")
        .bind(coursewire_api::layers::auth::keys::hash(&key))
        .fetch_one(h.db.pool())
        .await
        .unwrap();
    let revoked = reqwest::Client::new()
        .post(format!("{base}/v1/apiKeys/{key_id}:revoke"))
        .bearer_auth(&h.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let ended = v.get("/console").await;
    assert_eq!(ended.location(), "/console/signin?ended=1");
    // And a post with that cookie does nothing.
    let post = v.post_as("/console/webhooks", &[("url", "https://example.com/x")], &origin).await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED);
    assert_eq!(h.count("webhook_endpoints").await, 0);
    // A revoked key cannot sign in.
    let mut v = Visitor::new(&base);
    let refused = v.post_as("/console/signin", &[("key", &key)], &origin).await;
    assert!(refused.body.contains("KEY_REVOKED") && v.cookie.is_none(), "{}", refused.body);
}

/// An expired link signs nothing in; a link opened from another site (the browser withholds
/// the strict cookie along that redirect) lands on a page that loads the console again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_links_and_links_opened_from_another_site() {
    let h = Harness::start(Backend::Sqlite).await;
    let base = format!("http://{}", h.addr());
    let (_, link) = mint(&base, &h.key, json!({"ttl": "60s"})).await;
    h.clock.advance(61_000);
    let mut v = Visitor::new(&base);
    let page = v.open(link["url"].as_str().unwrap()).await;
    assert_eq!((page.status, v.cookie.is_none()), (StatusCode::UNAUTHORIZED, true));

    let mut v = Visitor::new(&base);
    let req = v.http.get(format!("{base}/console")).header("sec-fetch-site", "cross-site");
    let landing = v.page(req).await;
    assert_eq!(landing.status, StatusCode::OK);
    assert!(landing.body.contains("http-equiv=\"refresh\""), "{}", landing.body);
}

/// `coursewire console link` prints a URL that signs in to the all-in-one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_a_link_that_signs_in() {
    let app = crate::processes::all_in_one(&[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coursewire"))
        .current_dir(app.dir())
        .env_remove("COURSEWIRE_DATABASE_URL")
        .args(["console", "link", "--org", "default", "--listen", &format!("127.0.0.1:{}", app.port)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8(out.stdout).unwrap();
    let url = url.trim();
    assert_eq!(url.lines().count(), 1, "one line: {url}");
    let base = format!("http://127.0.0.1:{}", app.port);
    let mut v = Visitor::new(&base);
    assert_eq!(v.open(url).await.status, StatusCode::SEE_OTHER);
    let page = v.get("/console/keys").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("bootstrap"), "the bootstrap key is listed: {}", page.body);
    for (args, why) in [
        (vec!["--org", "nobody"], "an unknown organization"),
        (vec!["--org", "default", "--ttl", "2d"], "a ttl over 24 h"),
        (vec!["--org", "default", "--scopes", "root"], "an unknown scope"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_coursewire"))
            .current_dir(app.dir())
            .env_remove("COURSEWIRE_DATABASE_URL")
            .args(["console", "link"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success() && out.stdout.is_empty(), "{why}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

/// The same flows on Postgres: a link, a key made in the console, a session another replica
/// honours.
#[cfg_attr(not(cw_postgres), ignore = "skipped: COURSEWIRE_TEST_DATABASE_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_live_in_the_database_on_postgres() {
    let h = Harness::start(Backend::Postgres).await;
    let mut v = signed_in(&h, &h.key, &["keys:write"]).await;
    let created = v.post("/console/keys", &[("label", "pg"), ("scopes", "keys:read")]).await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.body);
    let secret = created.body.split("value=\"sk_").nth(1).unwrap().split('"').next().unwrap();
    let ping = reqwest::Client::new()
        .get(format!("http://{}/v1/ping", h.addr()))
        .bearer_auth(format!("sk_{secret}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), StatusCode::OK);
    let replica = h.replica().await;
    let mut other = Visitor::new(&format!("http://{}", replica.addr()));
    other.cookie = v.cookie.clone();
    assert_eq!(other.get("/console/keys").await.status, StatusCode::OK, "every replica honours the session");
}

/// Who changed keys and webhooks is recorded with the change: a console session, a key; each
/// reader sees the entries its scopes cover (`ListActivity`, `/console/activity`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_activity_log_names_who_changed_keys_and_webhooks() {
    let h = Harness::start(Backend::Sqlite).await;
    let base = format!("http://{}", h.addr());
    let http = reqwest::Client::new();
    let mut v = signed_in(&h, &h.key, &["*"]).await;
    let made = v.post("/console/keys", &[("label", "made in the console"), ("scopes", "users:read")]).await;
    assert_eq!(made.status, StatusCode::OK, "{}", made.body);
    let keys: Value =
        http.get(format!("{base}/v1/apiKeys")).bearer_auth(&h.key).send().await.unwrap().json().await.unwrap();
    let made_id =
        keys["api_keys"].as_array().unwrap().iter().find(|k| k["label"] == "made in the console").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
    let revoked = http
        .post(format!("{base}/v1/apiKeys/{made_id}:revoke"))
        .bearer_auth(&h.key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let hooks = h.scoped_key(&["webhooks:write"]).await;
    let hook = http
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(&hooks)
        .json(&json!({"url": "https://example.com/hook", "headers": {"x-token": "s3cr3t-header"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), StatusCode::OK);

    let read = |key: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let page: Value =
                http.get(format!("{base}/v1/activity")).bearer_auth(key).send().await.unwrap().json().await.unwrap();
            page["entries"].as_array().unwrap().clone()
        }
    };
    let all = read(h.key.clone()).await;
    let said: Vec<(&str, &str)> =
        all.iter().map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap())).collect();
    let acme = format!("key sk_{}…", &h.key[3..11]);
    let webhook_key = format!("key sk_{}…", &hooks[3..11]);
    assert_eq!(
        said[..4],
        [
            ("webhook.created", webhook_key.as_str()),
            ("api_key.created", "operator (CLI)"), // the harness's scoped key
            ("api_key.revoked", acme.as_str()),
            ("api_key.created", "sign-in link in the console"),
        ],
        "newest first: {all:#?}"
    );
    assert!(!serde_json::to_string(&all).unwrap().contains("s3cr3t-header"), "no header value in the log");
    // Each reader sees what its scopes cover.
    let only_hooks = read(h.scoped_key(&["webhooks:read"]).await).await;
    assert!(only_hooks.iter().all(|e| e["action"].as_str().unwrap().starts_with("webhook.")) && !only_hooks.is_empty());
    assert!(read(h.scoped_key(&["users:read"]).await).await.is_empty());
    // And the console shows it.
    let page = v.get("/console/activity").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("sign-in link in the console") && page.body.contains(&acme), "{}", page.body);
}

/// Links and sessions do not pile up: retention deletes them a day past their end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_links_and_sessions_are_deleted_a_day_later() {
    let h = Harness::start(Backend::Sqlite).await;
    let base = format!("http://{}", h.addr());
    let _signed_in = signed_in(&h, &h.key, &["*"]).await;
    let (status, _unused) = mint(&base, &h.key, json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((h.count("console_links").await, h.count("console_sessions").await), (2, 1));
    h.clock.advance(12 * 3_600_000 + 23 * 3_600_000);
    h.prune().await;
    assert_eq!(
        (h.count("console_links").await, h.count("console_sessions").await),
        (0, 1),
        "a link ends after 15 minutes"
    );
    h.clock.advance(2 * 3_600_000);
    h.prune().await;
    assert_eq!(h.count("console_sessions").await, 0, "a session ends 12 hours after sign-in at the latest");
}
