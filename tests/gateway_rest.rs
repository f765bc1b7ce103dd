//! The ClearML REST API of the gateway, driven with a real HTTP client
//! against `tasklab::run_embedded` on loopback ports: authentication, the
//! transport rules ClearML clients rely on, bad input (each answered with
//! HTTP status = `result_code`, the right subcode, nothing changed, the
//! server still serving), and the endpoints of the SDK and agent flows.

mod common;

use base64::Engine as _;
use common::{ACCESS_KEY, Embedded, SECRET_KEY, basic, send};
use serde_json::{Value, json};

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn login_issues_clearml_tokens_and_every_bad_credential_is_401() {
    let tl = Embedded::start().await;
    let api = tl.api;

    // Unknown endpoints are 404 before any authentication.
    let reply = send(
        api,
        "GET",
        "/v2.23/workers.get_runtime_properties",
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.codes(), (404, 404, 0));
    assert!(reply.text().contains("Unable to find endpoint"));

    // Login: unversioned GET with Basic auth and the expiration in the query.
    let auth = basic(ACCESS_KEY, SECRET_KEY);
    let reply = send(
        api,
        "GET",
        "/auth.login?expiration_sec=600",
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    for key in ["id", "trx", "endpoint", "result_code", "result_msg"] {
        assert!(json["meta"].get(key).is_some(), "meta.{key} missing");
    }
    let token = json["data"]["token"].as_str().unwrap().to_owned();
    let c = claims(&token);
    assert_eq!(c["api_version"], "2.31");
    assert_eq!(c["feature_set"], "basic");
    assert_eq!(c["identity"]["user"], ACCESS_KEY);
    for key in ["server_version", "server_build", "env", "iat"] {
        assert!(c.get(key).is_some(), "claim {key} missing");
    }
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);

    // The token works on versioned and unversioned paths; Basic works too.
    assert_eq!(
        tl.call(&token, "users.get_current_user", json!({}))
            .await
            .status,
        200
    );
    let info = send(
        api,
        "POST",
        "/server.info",
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(info.json()["data"]["api_version"], "2.31");

    // Missing credentials: 401/20. Wrong secret: 401/22. Bad token: 401/30.
    let reply = send(api, "GET", "/v2.23/tasks.get_all", &[], b"{}").await;
    assert_eq!(reply.codes(), (401, 401, 20));
    let wrong = basic(ACCESS_KEY, "wrong-secret");
    let reply = send(api, "GET", "/auth.login", &[("authorization", &wrong)], b"").await;
    assert_eq!(reply.codes(), (401, 401, 22));
    let reply = send(
        api,
        "GET",
        "/auth.login",
        &[("authorization", &basic("nobody", "x"))],
        b"",
    )
    .await;
    assert_eq!(reply.codes(), (401, 401, 22));
    let mut forged = token.clone();
    forged.push('x');
    let reply = tl.call(&forged, "tasks.get_all", json!({})).await;
    assert_eq!(reply.codes(), (401, 401, 30));
    let reply = tl.call("not-a-token", "tasks.get_all", json!({})).await;
    assert_eq!(reply.codes(), (401, 401, 30));

    // auth.validate_token reports validity without failing the call.
    let data = tl
        .ok(&token, "auth.validate_token", json!({"token": token}))
        .await;
    assert_eq!(data["valid"], true);
    let data = tl
        .ok(&token, "auth.validate_token", json!({"token": forged}))
        .await;
    assert_eq!(data["valid"], false);

    // An expired token is 401/30, so the SDK logs in again.
    let reply = send(
        api,
        "GET",
        "/auth.login?expiration_sec=1",
        &[("authorization", &auth)],
        b"",
    )
    .await;
    let short = reply.json()["data"]["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let reply = tl.call(&short, "tasks.get_all", json!({})).await;
    assert_eq!(reply.codes(), (401, 401, 30));
    // ...and the server keeps serving.
    assert_eq!(
        tl.call(&token, "tasks.get_all", json!({})).await.status,
        200
    );
    tl.stop().await;
}

#[tokio::test]
async fn malformed_oversized_and_encoded_requests_are_rejected_and_change_nothing() {
    let tl = Embedded::start().await;
    let token = tl.token().await;
    let bearer = format!("Bearer {token}");
    let api = tl.api;
    let headers = [("authorization", bearer.as_str())];

    let count = async |tl: &Embedded| {
        tl.ok(&token, "projects.get_all", json!({})).await["projects"]
            .as_array()
            .unwrap()
            .len()
    };
    let before = count(&tl).await;

    // Malformed JSON, a body that is not an object, wrong field types.
    for body in [&b"{\"name\": "[..], b"[1, 2]", b"\"proj\""] {
        let reply = send(api, "GET", "/v2.23/projects.create", &headers, body).await;
        assert_eq!(reply.codes(), (400, 400, 12), "{}", reply.text());
    }
    let reply = tl.call(&token, "projects.create", json!({"name": 5})).await;
    assert_eq!(reply.codes(), (400, 400, 12));
    assert!(
        reply.json()["meta"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("projects.create")
    );
    let reply = tl
        .call(&token, "tasks.get_all", json!({"page_size": "many"}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 12));
    let reply = tl
        .call(&token, "tasks.get_all", json!({"status": ["sleeping"]}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 12));
    // A missing required field.
    let reply = tl
        .call(&token, "projects.create", json!({"description": "x"}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 11));
    // An invalid regular expression.
    let reply = tl
        .call(&token, "projects.get_all", json!({"name": "(unclosed"}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 21));
    let reply = tl
        .call(&token, "tasks.get_all", json!({"name": "[z-a]"}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 21));

    // Over the body limit: 413, by announced length or while reading.
    let huge = vec![b' '; tasklab_gateway::DEFAULT_MAX_BODY_BYTES + 1];
    let reply = send(api, "GET", "/v2.23/projects.create", &headers, &huge).await;
    assert_eq!(reply.codes(), (413, 413, 0));
    let reply = send(
        api,
        "GET",
        "/v2.23/projects.create",
        &[
            ("authorization", bearer.as_str()),
            ("transfer-encoding", "chunked"),
        ],
        &chunked(&huge),
    )
    .await;
    assert_eq!(reply.codes(), (413, 413, 0));

    // Encoded request bodies: 415.
    let reply = send(
        api,
        "GET",
        "/v2.23/projects.create",
        &[
            ("authorization", bearer.as_str()),
            ("content-encoding", "gzip"),
        ],
        b"\x1f\x8b",
    )
    .await;
    assert_eq!(reply.codes(), (415, 415, 0));

    // Unknown ids.
    let reply = tl
        .call(
            &token,
            "tasks.get_by_id",
            json!({"task": "0123456789abcdef0123456789abcdef"}),
        )
        .await;
    assert_eq!(reply.codes(), (400, 400, 101));
    let reply = tl
        .call(&token, "projects.get_by_id", json!({"project": "nope"}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 401));
    let reply = tl
        .call(&token, "queues.get_by_id", json!({"queue": "default"}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 701));
    let reply = tl
        .call(&token, "models.get_by_id", json!({"model": "nope"}))
        .await;
    assert_eq!(reply.codes(), (400, 400, 201));

    // Bad input aimed at an existing task leaves it exactly as it was:
    // wrong field types, no credentials, a wrong secret, a forged token.
    let tid = tl
        .ok(
            &token,
            "tasks.create",
            json!({"name": "bad-input-target", "tags": ["a"]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task_before = tl.ok(&token, "tasks.get_by_id", json!({"task": tid})).await["task"].clone();
    for body in [
        json!({"task": tid, "name": 5}),
        json!({"task": tid, "tags": "b"}),
        json!({"task": tid, "hyperparams": ["x"]}),
        json!({"task": tid, "force": "yes"}),
    ] {
        let reply = tl.call(&token, "tasks.edit", body.clone()).await;
        assert_eq!(reply.codes(), (400, 400, 12), "{body}: {}", reply.text());
        let meta = &reply.json()["meta"];
        for key in ["id", "trx", "endpoint", "result_code", "result_msg"] {
            assert!(meta.get(key).is_some(), "meta.{key} missing: {meta}");
        }
        assert_eq!(meta["endpoint"]["name"], "tasks.edit");
    }
    let rename = json!({"task": tid, "name": "renamed"}).to_string();
    let wrong = basic(ACCESS_KEY, "wrong-secret");
    let forged = format!("Bearer {token}x");
    for (headers, codes) in [
        (vec![], (401, 401, 20)),
        (vec![("authorization", wrong.as_str())], (401, 401, 22)),
        (vec![("authorization", forged.as_str())], (401, 401, 30)),
    ] {
        let reply = send(api, "GET", "/v2.23/tasks.edit", &headers, rename.as_bytes()).await;
        assert_eq!(reply.codes(), codes, "{}", reply.text());
    }
    let reply = tl
        .call(
            &token,
            "tasks.edit",
            json!({"task": "0123456789abcdef0123456789abcdef", "name": "renamed"}),
        )
        .await;
    assert_eq!(reply.codes(), (400, 400, 101));
    let task_after = tl.ok(&token, "tasks.get_by_id", json!({"task": tid})).await["task"].clone();
    assert_eq!(task_after, task_before);

    // Nothing was created, and the server still serves.
    assert_eq!(count(&tl).await, before);
    tl.ok(&token, "projects.create", json!({"name": "still-works"}))
        .await;
    assert_eq!(count(&tl).await, before + 1);
    tl.stop().await;
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(1 << 20) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn transport_accepts_what_clearml_clients_send() {
    let tl = Embedded::start().await;
    let token = tl.token().await;
    let bearer = format!("Bearer {token}");
    let api = tl.api;

    // GET with a JSON body, unknown fields at every level, nulls, the agent's
    // unversioned and old-versioned paths, a trailing slash.
    let body = json!({"name": "transport", "description": "", "method": "get", "whatever": {"x": 1}, "tags": null});
    for (path, name) in [
        ("/v2.23/projects.create", "p1"),
        ("/projects.create/", "p2"),
        ("/v2.5/projects.create", "p3"),
    ] {
        let mut body = body.clone();
        body["name"] = json!(name);
        let reply = send(
            api,
            "GET",
            path,
            &[("authorization", &bearer)],
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        let meta = &reply.json()["meta"];
        assert_eq!(meta["endpoint"]["name"], "projects.create");
    }
    let reply = send(
        api,
        "GET",
        "/v2.5/projects.get_all",
        &[("authorization", &bearer)],
        b"",
    )
    .await;
    assert_eq!(reply.json()["meta"]["endpoint"]["requested_version"], "2.5");

    // Query-string arguments merge into the body.
    let reply = send(
        api,
        "GET",
        "/v2.23/projects.get_all?name=%5Ep2%24",
        &[("authorization", &bearer)],
        b"{}",
    )
    .await;
    let projects = reply.json()["data"]["projects"].as_array().unwrap().clone();
    assert_eq!(projects.len(), 1, "{projects:?}");
    assert_eq!(projects[0]["name"], "p2");

    // gzip when the client accepts it.
    let reply = send(
        api,
        "GET",
        "/v2.23/projects.get_all",
        &[("authorization", &bearer), ("accept-encoding", "gzip")],
        b"{}",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert_eq!(&reply.body[..2], b"\x1f\x8b");
    tl.stop().await;
}

#[tokio::test]
async fn projects_and_tasks_round_trip_in_clearml_shapes() {
    let tl = Embedded::start().await;
    let t = tl.token().await;

    // Nested project creation; name lookups are regular expressions.
    let pid = tl
        .ok(
            &t,
            "projects.create",
            json!({"name": "main/sub", "description": ""}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let found = tl
        .ok(
            &t,
            "projects.get_all",
            json!({"name": "^main/sub$", "only_fields": ["id"], "search_hidden": true}),
        )
        .await;
    assert_eq!(found["projects"][0]["id"], pid.as_str());
    assert_eq!(
        found["projects"][0].as_object().unwrap().len(),
        1,
        "only_fields"
    );
    let parent = tl
        .ok(&t, "projects.get_all", json!({"name": "^main$"}))
        .await;
    assert_eq!(parent["projects"].as_array().unwrap().len(), 1);
    let p = tl
        .ok(&t, "projects.get_by_id", json!({"project": pid}))
        .await;
    assert_eq!(p["project"]["name"], "main/sub");
    assert_eq!(p["project"]["basename"], "sub");

    // Task creation as Task.init sends it, then the full object.
    let tid = tl
        .ok(
            &t,
            "tasks.create",
            json!({
                "name": "exp1", "system_tags": ["development"], "type": "training",
                "comment": "Auto-generated", "project": pid,
            }),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let task = tl.ok(&t, "tasks.get_by_id", json!({"task": tid})).await["task"].clone();
    for section in [
        "output",
        "execution",
        "script",
        "models",
        "hyperparams",
        "configuration",
        "runtime",
        "container",
        "last_metrics",
    ] {
        assert!(task[section].is_object(), "{section}: {}", task[section]);
    }
    assert!(task["execution"]["artifacts"].is_array());
    assert_eq!(task["status"], "created");
    assert_eq!(task["project"], pid.as_str());
    assert_eq!(task["user"], ACCESS_KEY);
    assert!(task["created"].as_str().unwrap().contains('T'), "ISO time");

    // tasks.started twice (same-status start succeeds).
    for _ in 0..2 {
        let data = tl
            .ok(&t, "tasks.started", json!({"task": tid, "force": false}))
            .await;
        assert_eq!(data["fields"]["status"], "in_progress");
    }
    // Edits as the SDK sends them: forced, whole sections, output_dest.
    tl.ok(&t, "tasks.edit", json!({"task": tid, "force": true, "script": {"binary": "python", "diff": "print(1)", "entry_point": "train.py", "requirements": {"pip": "numpy"}}})).await;
    tl.ok(
        &t,
        "tasks.edit",
        json!({"task": tid, "force": true, "output_dest": "http://files.example"}),
    )
    .await;
    tl.ok(&t, "tasks.edit", json!({"task": tid, "force": true, "hyperparams": {
        "General": {"lr": {"section": "General", "name": "lr", "value": "0.1", "type": "float", "description": ""}},
        "properties": {"owner": {"section": "properties", "name": "owner", "value": "me", "type": "str"}},
    }, "configuration": {"cfg": {"name": "cfg", "value": "a: 1", "type": "dictionary"}},
       "execution": {"framework": "PyTorch", "dataviews": [], "model_labels": {"cat": 1}, "parameters": {}},
       "runtime": {"progress": "50", "CLI": "x"}})).await;
    tl.ok(
        &t,
        "tasks.set_requirements",
        json!({"task": tid, "requirements": {"pip": "torch", "conda": ""}}),
    )
    .await;
    let task = tl.ok(&t, "tasks.get_by_id", json!({"task": tid})).await["task"].clone();
    assert_eq!(task["output"]["destination"], "http://files.example");
    assert_eq!(task["script"]["diff"], "print(1)");
    assert_eq!(task["script"]["requirements"]["pip"], "torch");
    assert_eq!(task["hyperparams"]["General"]["lr"]["value"], "0.1");
    assert_eq!(task["hyperparams"]["properties"]["owner"]["value"], "me");
    assert_eq!(task["configuration"]["cfg"]["value"], "a: 1");
    assert_eq!(task["execution"]["framework"], "PyTorch");
    assert_eq!(task["execution"]["model_labels"]["cat"], 1);
    assert_eq!(task["runtime"]["progress"], "50");
    let params = tl
        .ok(&t, "tasks.get_hyper_params", json!({"tasks": [tid]}))
        .await;
    assert_eq!(
        params["params"][0]["hyperparams"].as_array().unwrap().len(),
        2
    );
    let conf = tl
        .ok(&t, "tasks.get_configurations", json!({"tasks": [tid]}))
        .await;
    assert_eq!(conf["configurations"][0]["configuration"][0]["name"], "cfg");

    // The abort monitor's poll: only the fields asked for.
    let polled = tl.ok(&t, "tasks.get_all", json!({"id": [tid], "only_fields": ["status", "status_message", "id"], "search_hidden": false})).await;
    let only = polled["tasks"][0].as_object().unwrap();
    assert_eq!(only.len(), 3, "{only:?}");
    assert_eq!(only["status"], "in_progress");

    // tasks.stop on a development task stops it at once.
    let stopped = tl.ok(&t, "tasks.stop", json!({"task": tid})).await;
    assert_eq!(stopped["fields"]["status"], "stopped");
    tl.ok(
        &t,
        "tasks.completed",
        json!({"task": tid, "force": true, "status_reason": "completed"}),
    )
    .await;
    // Invalid transitions and non-forced edits of a non-draft are 400/110
    // and change nothing.
    let reply = tl.call(&t, "tasks.stopped", json!({"task": tid})).await;
    assert_eq!(reply.codes(), (400, 400, 110), "{}", reply.text());
    assert_eq!(
        reply.json()["meta"]["error_data"]["current_status"],
        "completed"
    );
    let reply = tl
        .call(
            &t,
            "tasks.edit",
            json!({"task": tid, "comment": "x", "script": {}}),
        )
        .await;
    assert_eq!(reply.codes(), (400, 400, 110), "{}", reply.text());
    let task = tl.ok(&t, "tasks.get_by_id", json!({"task": tid})).await["task"].clone();
    assert_eq!(task["status"], "completed");
    assert_eq!(task["comment"], "Auto-generated");

    // Search: unanchored case-sensitive name regex, tag exclusion, paging, order.
    for name in ["exp2", "other", "EXP3"] {
        tl.ok(
            &t,
            "tasks.create",
            json!({"name": name, "type": "testing", "project": pid, "tags": [name]}),
        )
        .await;
    }
    let names = |v: &Value| -> Vec<String> {
        let mut n: Vec<String> = v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    let found = tl
        .ok(
            &t,
            "tasks.get_all",
            json!({"name": "exp", "project": [pid]}),
        )
        .await;
    assert_eq!(names(&found), ["exp1", "exp2"]);
    let found = tl
        .ok(
            &t,
            "tasks.get_all",
            json!({"project": [pid], "tags": ["-other"], "type": ["testing"]}),
        )
        .await;
    assert_eq!(names(&found), ["EXP3", "exp2"]);
    let mut seen = Vec::new();
    for page in 0..3 {
        let data = tl.ok(&t, "tasks.get_all", json!({"project": [pid], "order_by": ["name"], "page": page, "page_size": 2, "only_fields": ["name"]})).await;
        seen.extend(names(&data));
    }
    seen.sort();
    assert_eq!(seen, ["EXP3", "exp1", "exp2", "other"]);
    let ordered = tl
        .ok(
            &t,
            "tasks.get_all",
            json!({"project": [pid], "order_by": ["-name"], "only_fields": ["name"]}),
        )
        .await;
    assert_eq!(ordered["tasks"][0]["name"], "other");
    // Archived tasks are excluded only on request; hidden ones unless search_hidden.
    tl.ok(&t, "tasks.archive", json!({"tasks": [tid]})).await;
    let found = tl
        .ok(
            &t,
            "tasks.get_all",
            json!({"project": [pid], "system_tags": ["-archived"]}),
        )
        .await;
    assert_eq!(found["tasks"].as_array().unwrap().len(), 3);
    let found = tl.ok(&t, "tasks.get_all", json!({"project": [pid]})).await;
    assert_eq!(found["tasks"].as_array().unwrap().len(), 4);
    tl.stop().await;
}

#[tokio::test]
async fn enqueue_pick_up_reset_clone_and_delete_compose_the_services() {
    let tl = Embedded::start().await;
    let t = tl.token().await;
    let tid = tl
        .ok(
            &t,
            "tasks.create",
            json!({"name": "queued-task", "system_tags": ["development"]}),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // No default queue: 400/707 and the task stays a draft.
    let reply = tl.call(&t, "tasks.enqueue", json!({"task": tid})).await;
    assert_eq!(reply.codes(), (400, 400, 707), "{}", reply.text());
    let status = async |tl: &Embedded, tid: String| {
        tl.ok(&t, "tasks.get_by_id", json!({"task": tid})).await["task"].clone()
    };
    assert_eq!(status(&tl, tid.clone()).await["status"], "created");

    // Enqueue by name auto-creates the queue.
    let data = tl
        .ok(
            &t,
            "tasks.enqueue",
            json!({"task": tid, "queue_name": "gpu"}),
        )
        .await;
    assert_eq!(data["queued"], 1);
    let task = status(&tl, tid.clone()).await;
    assert_eq!(task["status"], "queued");
    let qid = task["execution"]["queue"].as_str().unwrap().to_owned();
    assert!(
        !task["system_tags"]
            .as_array()
            .unwrap()
            .contains(&json!("development"))
    );
    let queues = tl
        .ok(
            &t,
            "queues.get_all",
            json!({"name": "^gpu$", "only_fields": ["id", "entries"]}),
        )
        .await;
    assert_eq!(queues["queues"][0]["id"], qid.as_str());
    assert_eq!(queues["queues"][0]["entries"][0]["task"], tid.as_str());
    let q = tl.ok(&t, "queues.get_by_id", json!({"queue": qid})).await;
    assert_eq!(q["queue"]["name"], "gpu");

    // Dequeue restores the draft and empties the queue.
    let data = tl.ok(&t, "tasks.dequeue", json!({"task": tid})).await;
    assert_eq!(data["updated"], 1);
    assert_eq!(status(&tl, tid.clone()).await["status"], "created");
    assert_eq!(
        tl.ok(&t, "queues.get_next_task", json!({"queue": qid}))
            .await,
        json!({})
    );

    // The agent's loop: register, enqueue, pop, start, report, complete.
    tl.ok(
        &t,
        "queues.create",
        json!({"name": "default", "system_tags": ["default"]}),
    )
    .await;
    let default = tl.ok(&t, "queues.get_default", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tl.ok(
        &t,
        "workers.register",
        json!({"worker": "host:0", "queues": [default]}),
    )
    .await;
    tl.ok(&t, "tasks.enqueue", json!({"task": tid})).await;
    let next = tl
        .ok(&t, "queues.get_next_task", json!({"queue": default}))
        .await;
    assert_eq!(next["entry"]["task"], tid.as_str());
    assert_eq!(
        tl.ok(&t, "queues.get_next_task", json!({"queue": default}))
            .await,
        json!({}),
        "popped once"
    );
    for _ in 0..3 {
        tl.ok(
            &t,
            "tasks.started",
            json!({"task": tid, "force": true, "status_message": "pulled by agent"}),
        )
        .await;
    }
    tl.ok(
        &t,
        "tasks.dequeue",
        json!({"task": tid, "new_status": "in_progress"}),
    )
    .await;
    tl.ok(&t, "workers.status_report", json!({"worker": "host:0", "task": tid, "queue": default, "timestamp": 1_700_000_000_000_i64, "machine_stats": {"cpu_usage": [10.0, 20.0], "memory_used": 100}})).await;
    tl.ok(&t, "tasks.ping", json!({"task": tid})).await;
    // The SDK inside the run calls tasks.started again, with its host name
    // as X-ClearML-Worker: last_worker still names the agent's worker.
    let bearer = format!("Bearer {t}");
    let reply = send(
        tl.api,
        "GET",
        "/v2.23/tasks.started",
        &[("authorization", &bearer), ("x-clearml-worker", "laptop")],
        json!({"task": tid, "force": false}).to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(status(&tl, tid.clone()).await["last_worker"], "host:0");
    let workers = tl.ok(&t, "workers.get_all", json!({})).await;
    assert_eq!(workers["workers"][0]["id"], "host:0");
    // A worker-run task asked to stop keeps running with "stopping".
    let stop = tl.ok(&t, "tasks.stop", json!({"task": tid})).await;
    assert_eq!(stop["fields"]["status"], "in_progress");
    assert_eq!(stop["fields"]["status_message"], "stopping");
    tl.ok(
        &t,
        "tasks.completed",
        json!({"task": tid, "force": true, "status_reason": "worker execution done"}),
    )
    .await;
    tl.ok(&t, "workers.unregister", json!({"worker": "host:0"}))
        .await;

    // Reset: back to a draft, with the clean-up report.
    let reset = tl.ok(&t, "tasks.reset", json!({"task": tid, "force": false, "clear_all": false, "delete_external_artifacts": true})).await;
    assert_eq!(reset["updated"], 1);
    for key in ["deleted_models", "urls", "fields"] {
        assert!(reset.get(key).is_some(), "reset reply lacks {key}: {reset}");
    }
    assert_eq!(status(&tl, tid.clone()).await["status"], "created");

    // Clone: a new draft whose parent is the source.
    tl.ok(&t, "tasks.edit", json!({"task": tid, "hyperparams": {"Args": {"x": {"section": "Args", "name": "x", "value": "1"}}}})).await;
    let clone = tl
        .ok(
            &t,
            "tasks.clone",
            json!({"task": tid, "new_task_name": "the clone", "new_task_parent": tid}),
        )
        .await;
    let cid = clone["id"].as_str().unwrap().to_owned();
    let c = status(&tl, cid.clone()).await;
    assert_eq!(
        (
            c["status"].as_str(),
            c["parent"].as_str(),
            c["name"].as_str()
        ),
        (Some("created"), Some(tid.as_str()), Some("the clone"))
    );
    assert_eq!(c["hyperparams"]["Args"]["x"]["value"], "1");

    // Delete: gone (unknown id afterwards).
    let deleted = tl
        .ok(&t, "tasks.delete", json!({"task": cid, "force": true}))
        .await;
    assert_eq!(deleted["deleted"], 1);
    let reply = tl.call(&t, "tasks.get_by_id", json!({"task": cid})).await;
    assert_eq!(reply.codes(), (400, 400, 101));
    tl.stop().await;
}

#[tokio::test]
async fn events_batches_succeed_partially_and_feed_task_reads() {
    let tl = Embedded::start().await;
    let t = tl.token().await;
    let tid = tl
        .ok(&t, "tasks.create", json!({"name": "events-task"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {t}");
    let mut lines = Vec::new();
    for i in 0..5 {
        lines.push(json!({"timestamp": 1_700_000_000_000_i64 + i, "type": "training_stats_scalar", "task": tid, "iter": i, "metric": "loss", "variant": "train", "value": 1.0 / (i as f64 + 1.0), "method": "get"}));
    }
    lines.push(json!({"type": "training_stats_scalar", "task": tid, "iter": -2147483648_i64, "metric": "Summary", "variant": "acc", "value": 0.9}));
    lines.push(
        json!({"type": "log", "task": tid, "level": "INFO", "worker": "vm", "msg": "hello\nworld"}),
    );
    lines.push(json!({"type": "training_debug_image", "task": tid, "iter": 0, "metric": "img", "variant": "s", "key": "p/img_s_0.jpeg", "url": "http://files/p/img_s_0.jpeg"}));
    lines.push(json!({"type": "no_such_type", "task": tid}));
    lines.push(json!({"type": "log", "level": "info", "msg": "no task"}));
    let body: String = lines
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let reply = send(
        tl.api,
        "POST",
        "/events.add_batch",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json-lines"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let data = &reply.json()["data"];
    assert_eq!(data["added"], 8, "{data}");
    assert_eq!(data["errors"], 2, "{data}");
    assert_eq!(
        data["errors_info"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        2
    );

    // An empty batch is 400/17; a bad line is 400/12.
    let reply = send(
        tl.api,
        "POST",
        "/events.add_batch",
        &[("authorization", &bearer)],
        b"\n",
    )
    .await;
    assert_eq!(reply.codes(), (400, 400, 17));
    let reply = send(
        tl.api,
        "POST",
        "/events.add_batch",
        &[("authorization", &bearer)],
        b"{\"task\": 1}\n{oops",
    )
    .await;
    assert_eq!(reply.codes(), (400, 400, 12));

    // The task read joins last_metrics (md5 keys) and last_iteration.
    let task = tl.ok(&t, "tasks.get_by_id", json!({"task": tid})).await["task"].clone();
    assert_eq!(task["last_iteration"], 4);
    let metrics = task["last_metrics"].as_object().unwrap();
    let loss = metrics
        .values()
        .flat_map(|v| v.as_object().unwrap().values())
        .find(|v| v["metric"] == "loss")
        .unwrap();
    assert_eq!(loss["variant"], "train");
    assert_eq!(loss["min_value"], 0.2);
    assert_eq!(loss["max_value"], 1.0);

    let hist = tl
        .ok(
            &t,
            "events.scalar_metrics_iter_histogram",
            json!({"task": tid, "samples": 6000, "key": "iter"}),
        )
        .await;
    assert_eq!(hist["loss"]["train"]["x"], json!([0, 1, 2, 3, 4]));
    assert_eq!(hist["loss"]["train"]["name"], "train");
    let single = tl
        .ok(
            &t,
            "events.get_task_single_value_metrics",
            json!({"tasks": [tid]}),
        )
        .await;
    assert_eq!(single["tasks"][0]["values"][0]["variant"], "acc");
    assert_eq!(single["tasks"][0]["task_name"], "events-task");
    let log = tl
        .ok(
            &t,
            "events.get_task_log",
            json!({"task": tid, "batch_size": 10, "navigate_earlier": true, "order": "asc"}),
        )
        .await;
    assert_eq!(log["events"][0]["msg"], "hello\nworld");
    let raw = tl
        .ok(
            &t,
            "events.get_task_events",
            json!({"task": tid, "event_type": "training_stats_scalar", "batch_size": 3}),
        )
        .await;
    assert_eq!(raw["returned"], 3);
    let latest = tl
        .ok(
            &t,
            "events.get_task_latest_scalar_values",
            json!({"task": tid}),
        )
        .await;
    assert_eq!(latest["metrics"][0]["name"], "loss");

    // Debug samples scroll to an end: the SDK's `get_debug_samples` keeps
    // scrolling until a page comes back empty.
    let images =
        json!({"metrics": [{"task": tid, "metric": "img", "variants": ["s"]}], "iters": 100});
    let first = tl.ok(&t, "events.debug_images", images.clone()).await;
    let iterations = &first["metrics"][0]["iterations"];
    assert_eq!(iterations.as_array().unwrap().len(), 1, "{first}");
    assert_eq!(
        iterations[0]["events"][0]["url"],
        "http://files/p/img_s_0.jpeg"
    );
    let scroll = first["scroll_id"].as_str().unwrap();
    assert!(!scroll.is_empty(), "{first}");
    let mut next = images.clone();
    next["scroll_id"] = json!(scroll);
    let next = tl.ok(&t, "events.debug_images", next).await;
    let left: usize = next["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["iterations"].as_array().unwrap().len())
        .sum();
    assert_eq!(left, 0, "{next}");

    // Reset deletes the events and the summaries.
    tl.ok(&t, "tasks.started", json!({"task": tid})).await;
    let reset = tl
        .ok(&t, "tasks.reset", json!({"task": tid, "force": true}))
        .await;
    assert!(reset["events"]["deleted"].as_u64().unwrap() >= 8, "{reset}");
    let task = tl.ok(&t, "tasks.get_by_id", json!({"task": tid})).await["task"].clone();
    assert_eq!(task["last_metrics"], json!({}));
    assert_eq!(task["last_iteration"], 0);
    tl.stop().await;
}

/// `events.add_batch` decodes what clients send leniently, line by line,
/// and a retried body (the same bytes) does not double the console.
#[tokio::test]
async fn events_batch_lines_decode_leniently_and_retries_keep_logs_once() {
    let tl = Embedded::start().await;
    let t = tl.token().await;
    let tid = tl
        .ok(&t, "tasks.create", json!({"name": "batch-decoding"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {t}");
    let add = async |body: &[u8]| {
        send(
            tl.api,
            "POST",
            "/v2.23/events.add_batch",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json-lines"),
            ],
            body,
        )
        .await
    };

    // CRLF lines, a blank line, escapes, a repeated key (the last wins), a
    // number sent as a string, `null` for "not given", unknown fields.
    let body = format!(
        concat!(
            r#"{{"type":"log","task":"{t}","level":"WARNING","worker":"w","msg":"first\nline \"one\"","timestamp":1700000000000,"method":"get"}}"#,
            "\r\n",
            r#"{{"type":"log","task":"{t}","level":"info","worker":"w","msg":"ignored","msg":"second","timestamp":"1700000000001"}}"#,
            "\r\n\r\n",
            r#"{{"type":"training_stats_scalar","task":"{t}","iter":"7","metric":"m","variant":"v","value":"0.25","x_axis_label":null,"model_event":false,"allow_locked":false}}"#,
            "\n"
        ),
        t = tid
    );
    for _ in 0..2 {
        let reply = add(body.as_bytes()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let data = &reply.json()["data"];
        assert_eq!(
            (data["added"].as_u64(), data["errors"].as_u64()),
            (Some(3), Some(0)),
            "{data}"
        );
    }
    let log = tl
        .ok(
            &t,
            "events.get_task_log",
            json!({"task": tid, "batch_size": 100, "navigate_earlier": false, "order": "asc"}),
        )
        .await;
    let messages: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["msg"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["first\nline \"one\"", "second"], "{log}");
    assert_eq!(log["events"][0]["level"], "warning");
    let scalars = tl
        .ok(
            &t,
            "events.get_task_events",
            json!({"task": tid, "event_type": "training_stats_scalar"}),
        )
        .await;
    assert_eq!(scalars["events"][0]["iter"], 7, "{scalars}");
    assert_eq!(scalars["events"][0]["value"], 0.25, "{scalars}");

    // Other bytes are another batch: its logs are appended (ClearML's way).
    let other = body.replacen("\"method\":\"get\"", "\"method\": \"get\"", 1);
    assert_eq!(add(other.as_bytes()).await.json()["data"]["added"], 3);
    let log = tl
        .ok(
            &t,
            "events.get_task_log",
            json!({"task": tid, "batch_size": 100}),
        )
        .await;
    assert_eq!(log["total"], 4, "{log}");

    // The list form: a non-object item is one bad event.
    let list = format!(r#"[{{"type":"log","task":"{tid}","msg":"x"}}, 5]"#);
    let reply = add(list.as_bytes()).await;
    let data = &reply.json()["data"];
    assert_eq!(
        (data["added"].as_u64(), data["errors"].as_u64()),
        (Some(1), Some(1)),
        "{data}"
    );
    assert_eq!(data["errors_info"]["event is not an object"], 1, "{data}");

    // A line that is not an object, or a body that is not UTF-8, fails the
    // whole request (400/12) and stores nothing.
    let bad = format!("{{\"type\":\"log\",\"task\":\"{tid}\",\"msg\":\"lost\"}}\n[1]\n");
    let reply = add(bad.as_bytes()).await;
    assert_eq!(reply.codes(), (400, 400, 12));
    assert!(
        reply
            .text()
            .contains("line 2 must be a JSON object, not a list"),
        "{}",
        reply.text()
    );
    assert_eq!(add(b"{\"task\":\"\xff\"}").await.codes(), (400, 400, 12));
    let log = tl
        .ok(
            &t,
            "events.get_task_log",
            json!({"task": tid, "batch_size": 100}),
        )
        .await;
    assert_eq!(log["total"], 5, "{log}");
    tl.stop().await;
}

fn with<T>(auth: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(auth) = auth {
        req.metadata_mut()
            .insert("authorization", auth.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn public_grpc_api_requires_authentication_and_composes_tasks() {
    use tasklab_proto::projects::v1::projects_service_client::ProjectsServiceClient;
    use tasklab_proto::tasks::v1 as tpb;
    use tasklab_proto::tasks::v1::tasks_service_client::TasksServiceClient;

    let tl = Embedded::start().await;
    let token = tl.token().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", tl.api))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut tasks = TasksServiceClient::new(channel.clone());
    let list = tpb::ListTasksRequest::default();

    // No, bad and forged credentials: UNAUTHENTICATED.
    for auth in [
        None,
        Some("Bearer nope"),
        Some(&*basic(ACCESS_KEY, "wrong")),
    ] {
        let err = tasks
            .list_tasks(with(auth, list.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{auth:?}");
    }

    // A token from auth.login, or the key pair, works.
    let bearer = format!("Bearer {token}");
    let created = tasks
        .create_task(with(
            Some(&bearer),
            tpb::CreateTaskRequest {
                name: "via grpc".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(created.user, ACCESS_KEY, "the caller's id is passed on");
    let basic = basic(ACCESS_KEY, SECRET_KEY);
    let got = tasks
        .get_task(with(
            Some(&basic),
            tpb::GetTaskRequest {
                id: created.id.clone(),
                read_mask: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap();
    assert_eq!(got.name, "via grpc");

    // A composed RPC: enqueue without a default queue is no_default_queue.
    let err = tasks
        .enqueue_task(with(
            Some(&bearer),
            tpb::EnqueueTaskRequest {
                id: created.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let detail = tasklab_error::Error::from_status(&err);
    assert_eq!(detail.code(), tasklab_error::ErrorCode::NoDefaultQueue);

    // The transparent proxy reaches the other services.
    let mut projects = ProjectsServiceClient::new(channel);
    let err = projects
        .list_projects(with(
            None,
            tasklab_proto::projects::v1::ListProjectsRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let project = projects
        .create_project(with(
            Some(&bearer),
            tasklab_proto::projects::v1::CreateProjectRequest {
                path: "grpc/nested".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .project
        .unwrap();
    assert_eq!(project.path, "grpc/nested");
    assert_eq!(project.user, ACCESS_KEY);
    tl.stop().await;
}
