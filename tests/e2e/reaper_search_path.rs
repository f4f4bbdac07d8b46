//! The reaper's SQL names only the catalogs, whatever a grant put in its way. An attack
//! review had a write grant create `public.make_interval(secs numeric)`, a closer match
//! for the reaper's filter than the built-in: it ran as the reaper's role (on the service
//! connection, the service role, which made the engineer a login of their own), hid the
//! backend, and the audit said it had gone on its own.

use crate::fleet::connect_via;
use crate::fleet_reaper::{stubborn_on_node_one, two_nodes, write_grant};
use crate::harness::Env;

/// Runs as whoever calls it: notes who, tries to make a login of the engineer's, and
/// would hide every backend from a filter that called it.
const SHADOW: &str = "CREATE TABLE public.who_ran (r text); \
    GRANT INSERT ON public.who_ran TO PUBLIC; \
    CREATE FUNCTION public.make_interval(secs numeric) RETURNS interval \
    LANGUAGE plpgsql AS $f$ BEGIN \
      INSERT INTO public.who_ran VALUES (current_user); \
      BEGIN \
        EXECUTE 'CREATE ROLE backdoor LOGIN PASSWORD ''eve-knows'''; \
      EXCEPTION WHEN others THEN NULL; END; \
      RETURN interval '1000 years'; END $f$";

/// The backend is terminated, as recorded, and nothing of the engineer's ran.
async fn terminated_and_nothing_ran(env: &Env, id: &str, pid: i32) {
    crate::terminate::wait_until_gone(env, pid).await;
    crate::terminate::wait_for_terminated(env, id, pid).await;
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM public.who_ran"),
        "0"
    );
    assert_eq!(
        env.superuser_sql("SELECT count(*) FROM pg_roles WHERE rolname = 'backdoor'"),
        "0"
    );
}

/// Over the service connection: the grant's role at its limit (a session on node 2).
#[tokio::test(flavor = "multi_thread")]
async fn a_grants_function_does_not_run_as_the_service_role_for_the_reaper() {
    let (env, two) = two_nodes("reaper_path_service").await;
    env.superuser_sql("GRANT CREATE ON SCHEMA public TO lockbox_write");
    let (id, token) = write_grant(&env, "T-SVC", Some(1)).await;
    let (other, _conn) = connect_via(&env, two.proxy_addr.port(), &token)
        .await
        .expect("login on node 2");
    other
        .batch_execute(SHADOW)
        .await
        .expect("the engineer's function");
    let (raw, pid) = stubborn_on_node_one(&env, &token).await;
    drop(raw);
    terminated_and_nothing_ran(&env, &id, pid).await;
}

/// Logged in as the grant's role, which has defaults that would bind its logins: a
/// search path that puts `public` first, a statement timeout no query meets, an idle
/// timeout shorter than the reaper's pause between looks, and a role to switch to (which
/// moves `current_user`).
#[tokio::test(flavor = "multi_thread")]
async fn a_grants_function_and_its_roles_defaults_do_not_blind_its_reaper() {
    let (env, _two) = two_nodes("reaper_path_own").await;
    env.superuser_sql("GRANT CREATE ON SCHEMA public TO lockbox_write");
    let (id, token) = write_grant(&env, "T-OWN", None).await;
    let (client, _conn) = env.connect("eve", &token).await.expect("login");
    client
        .batch_execute(SHADOW)
        .await
        .expect("the engineer's function");
    drop(client);
    let (raw, pid) = stubborn_on_node_one(&env, &token).await;
    env.superuser_sql(&format!(
        "ALTER ROLE \"lockbox_{id}\" SET search_path = public, pg_catalog; \
         ALTER ROLE \"lockbox_{id}\" SET statement_timeout = '1ms'; \
         ALTER ROLE \"lockbox_{id}\" SET idle_session_timeout = '1ms'; \
         ALTER ROLE \"lockbox_{id}\" SET role = 'lockbox_write'"
    ));
    drop(raw);
    terminated_and_nothing_ran(&env, &id, pid).await;
}
