"""Drives a running control plane through the upstream NebulaPythonSDK (pinned in
scripts/setup.sh) and checks that every call answers what upstream's manager would
(API.md). Run by tests/tests/sdk_parity.rs, which starts the control plane and an agent
whose reports fill the history, and passes:

  NEBULA_SDK_URL       the control plane's base URL
  NEBULA_SDK_USER, NEBULA_SDK_PASSWORD   the local admin
  NEBULA_SDK_PREFIX    a prefix of this run's own, for every name it creates
  NEBULA_SDK_GROUP     a device group whose agent has reported
  NEBULA_SDK_IMAGES    two test images of the local registry, comma-separated

Every public method of the SDK is either exercised here or listed in PENDING (what the
control plane does not serve yet, issue 14), so that no method goes unchecked silently.
Exits 1 at the first answer that differs, printing the call and the answer.
"""

import os
import sys
import time

from NebulaPythonSDK import Nebula

# SDK methods the control plane does not serve yet.
PENDING = set()

called = set()


class Mismatch(Exception):
    pass


def call(nebula, method, *args, **kwargs):
    called.add(method)
    reply = getattr(nebula, method)(*args, **kwargs)
    print(f"{method}{args}{kwargs or ''} -> {reply['status_code']} {reply['reply']}")
    return reply


def expect(condition, what):
    if not condition:
        raise Mismatch(what)


def expect_answer(reply, status, **fields):
    expect(reply["status_code"] == status, f"status {reply['status_code']}, expected {status}")
    for key, value in fields.items():
        expect(reply["reply"].get(key) == value, f"{key} = {reply['reply'].get(key)!r}, expected {value!r}")


def apps(nebula, prefix):
    app = f"{prefix}-app"
    image, other = os.environ["NEBULA_SDK_IMAGES"].split(",")
    config = {
        "starting_ports": [8000], "containers_per": {"server": 1}, "env_vars": {"TEST": "test123"},
        "docker_image": image, "running": True, "volumes": [],
        "networks": ["nebula", "bridge"], "devices": [], "privileged": False, "rolling_restart": False,
    }
    expect_answer(call(nebula, "check_api"), 200, api_available=True)
    expect_answer(call(nebula, "create_app", app, config), 200, app_id=1, app_name=app, **config)
    expect_answer(call(nebula, "list_app_info", app), 200, app_id=1, **config)
    expect_answer(call(nebula, "create_app", app, config), 403, app_exists=True)
    listed = call(nebula, "list_apps")
    expect_answer(listed, 200)
    expect(app in listed["reply"]["apps"], "the new app is listed")
    expect_answer(call(nebula, "stop_app", app), 202, running=False, app_id=2)
    expect_answer(call(nebula, "start_app", app), 202, running=True, app_id=3)
    expect_answer(call(nebula, "restart_app", app), 202, app_id=4)
    # A partial update (PUT) keeps the rest; a full one (POST) resets what it omits.
    expect_answer(call(nebula, "update_app", app, {"docker_image": other}),
                  202, app_id=5, docker_image=other, env_vars={"TEST": "test123"})
    # Upstream answers a full update without env_vars with `"env_vars": []`.
    expect_answer(call(nebula, "update_app", app, {"docker_image": image}, force_all=True),
                  202, app_id=6, env_vars=[], starting_ports=[], running=True)
    # env_vars as a list of `K=V` strings, as upstream also takes them, echoed in that form.
    expect_answer(call(nebula, "update_app", app, {"env_vars": ["A=1", "B=x=y"]}),
                  202, app_id=7, env_vars=["A=1", "B=x=y"])
    expect_answer(call(nebula, "list_app_info", app), 200, app_id=7, env_vars=["A=1", "B=x=y"])
    expect_answer(call(nebula, "create_app", f"{prefix}-empty", {}), 400)
    expect("docker_image" in call(nebula, "create_app", f"{prefix}-empty", {})["reply"]["missing_parameters"],
           "docker_image is named missing")
    expect_answer(call(nebula, "delete_app", f"{prefix}-never"), 403, app_exists=False)
    return app


def as_user(token):
    return Nebula(token=token, host_uri=os.environ["NEBULA_SDK_URL"], request_timeout=30)


def users(nebula, prefix, app):
    user, group = f"{prefix}-user", f"{prefix}-users"
    created = call(nebula, "create_user", user, {"password": "pw-1", "token": "tok-1-0123456789abcdef"})
    expect_answer(created, 200, user_name=user)
    expect(created["reply"]["password"] != "pw-1" and created["reply"]["token"] != "tok-1-0123456789abcdef",
           "secrets are answered hashed")
    expect_answer(call(nebula, "create_user", user, {"password": "pw-1"}), 403, user_exists=True)
    expect_answer(call(nebula, "list_user", user), 200, user_name=user, token=created["reply"]["token"])
    expect(user in call(nebula, "list_users")["reply"]["users"], "the new user is listed")
    expect_answer(call(nebula, "list_user", f"{prefix}-nobody"), 403, user_exists=False)
    # Its own client: authenticated, but allowed nothing until a group says so.
    expect_answer(as_user("tok-1-0123456789abcdef").check_api(), 200, api_available=True)
    expect_answer(as_user("tok-1-0123456789abcdef").list_app_info(app), 403, access_allowed=False)
    expect_answer(call(nebula, "create_user_group", group, {"group_members": [user], "apps": {app: "ro"}}),
                  200, user_group=group, group_members=[user], apps={app: "ro"}, admin=False,
                  pruning_allowed=False)
    expect_answer(call(nebula, "create_user_group", group, {}), 403, user_group_exists=True)
    expect_answer(call(nebula, "list_user_group", group), 200, apps={app: "ro"})
    expect(group in call(nebula, "list_user_groups")["reply"]["user_groups"], "the new group is listed")
    expect_answer(as_user("tok-1-0123456789abcdef").list_app_info(app), 200, app_name=app)
    expect_answer(as_user("tok-1-0123456789abcdef").stop_app(app), 403, access_allowed=False)
    expect_answer(call(nebula, "update_user_group", group, {"apps": {app: "rw"}}), 200, apps={app: "rw"})
    expect_answer(as_user("tok-1-0123456789abcdef").stop_app(app), 202, running=False)
    expect_answer(as_user("tok-1-0123456789abcdef").start_app(app), 202, running=True)
    # Users and groups are the admin's: a user with rw on an app may not touch them.
    expect_answer(as_user("tok-1-0123456789abcdef").list_users(), 403, access_allowed=False)
    expect_answer(call(nebula, "update_user", user, {"password": "pw-2"}), 200, user_name=user)
    refreshed = call(nebula, "refresh_user_token", user)
    expect_answer(refreshed, 200)
    token = refreshed["reply"]["token"]
    expect(as_user("tok-1-0123456789abcdef").check_api()["status_code"] == 401, "the old token stops working")
    expect_answer(as_user(token).check_api(), 200, api_available=True)
    expect_answer(Nebula(username=user, password="pw-2", host_uri=os.environ["NEBULA_SDK_URL"]).check_api(),
                  200, api_available=True)
    expect_answer(call(nebula, "delete_user_group", group), 200)
    expect_answer(call(nebula, "list_user_group", group), 403, user_group_exists=False)
    expect_answer(call(nebula, "update_user_group", group, {"admin": True}), 403, user_group_exists=False)
    expect_answer(call(nebula, "delete_user", user), 200)
    expect(as_user(token).check_api()["status_code"] == 401, "a deleted user's token stops working")
    expect_answer(call(nebula, "delete_user", user), 403, user_exists=False)


def device_groups(nebula, prefix, app):
    group = f"{prefix}-group"
    expect_answer(call(nebula, "create_device_group", group, {"apps": [app]}), 200,
                  device_group=group, device_group_id=1, prune_id=1, apps=[app])
    expect_answer(call(nebula, "create_device_group", group, {"apps": [app]}), 403, device_group_exists=True)
    expect_answer(call(nebula, "list_device_group", group), 200, device_group_id=1, prune_id=1, apps=[app])
    info = call(nebula, "list_device_group_info", group)
    expect_answer(info, 200, device_group_id=1, prune_id=1, apps_list=[app])
    expect([found["app_name"] for found in info["reply"]["apps"]] == [app], "info carries the full app")
    expect(isinstance(info["reply"]["apps"][0]["env_vars"], (dict, list)), "full documents in info")
    listed = call(nebula, "list_device_groups")
    expect_answer(listed, 200)
    expect(group in listed["reply"]["device_groups"], "the new group is listed")
    first = call(nebula, "prune__device_group_images", group)
    expect_answer(first, 202, prune_id=2)
    pruned = call(nebula, "prune_images")
    expect_answer(pruned, 202)
    expect(pruned["reply"]["prune_ids"].get(group) == 3, "prune_images bumps every group")
    expect_answer(call(nebula, "update_device_group", group, {"apps": []}), 202, device_group_id=2, apps=[])
    expect_answer(call(nebula, "delete_device_group", group), 200)
    expect(call(nebula, "delete_device_group", group)["reply"] == {"device_group_exists": False},
           "a deleted group is gone")
    expect_answer(call(nebula, "delete_app", app), 200)


def cron_jobs(nebula, prefix):
    job = f"{prefix}-cron"
    image, other = os.environ["NEBULA_SDK_IMAGES"].split(",")
    config = {
        "schedule": "*/5 * * * *", "docker_image": image, "env_vars": {"TEST": "test123"},
        "running": True, "volumes": [], "networks": ["nebula", "bridge"], "devices": [],
        "privileged": False,
    }
    expect_answer(call(nebula, "create_cron_job", job, config), 200, cron_job_id=1, cron_job_name=job, **config)
    expect_answer(call(nebula, "create_cron_job", job, config), 403, cron_job_exists=True)
    expect_answer(call(nebula, "list_cron_job_info", job), 200, cron_job_id=1, **config)
    listed = call(nebula, "list_cron_jobs")
    expect_answer(listed, 200)
    expect(job in listed["reply"]["cron_jobs"], "the new cron job is listed")
    expect_answer(call(nebula, "create_cron_job", f"{prefix}-bad", {"schedule": "61 * * * *", "docker_image": image}),
                  400, schedule_valid=False)
    missing = call(nebula, "create_cron_job", f"{prefix}-bad", {})
    expect_answer(missing, 400)
    expect(set(missing["reply"]["missing_parameters"]) == {"schedule", "docker_image"},
           "schedule and docker_image are named missing")
    # A partial update (PUT) keeps the rest; a full one (POST) resets what it omits.
    expect_answer(call(nebula, "update_cron_job", job, {"docker_image": other}),
                  202, cron_job_id=2, docker_image=other, env_vars={"TEST": "test123"})
    expect_answer(call(nebula, "update_cron_job", job, {"schedule": "0 * * * *", "docker_image": image}, force_all=True),
                  202, cron_job_id=3, schedule="0 * * * *", env_vars={})
    # A group lists it; /info carries it in full; deleting it takes it out of the group.
    group = f"{prefix}-cron-group"
    expect_answer(call(nebula, "create_device_group", group, {"cron_jobs": [job]}), 200, cron_jobs=[job])
    info = call(nebula, "list_device_group_info", group)
    expect_answer(info, 200, cron_jobs_list=[job])
    expect([found["cron_job_name"] for found in info["reply"]["cron_jobs"]] == [job], "info carries the full job")
    expect_answer(call(nebula, "delete_cron_job", job), 200)
    expect_answer(call(nebula, "list_cron_job_info", job), 403, cron_job_exists=False)
    expect_answer(call(nebula, "delete_cron_job", job), 403, cron_job_exists=False)
    expect_answer(call(nebula, "list_device_group", group), 200, cron_jobs=[], device_group_id=2)
    expect_answer(call(nebula, "delete_device_group", group), 200)


def reports(nebula, group):
    # Upstream's own check: nothing matches → both null.
    expect_answer(call(nebula, "list_reports", hostname="test_non_existing_hostname",
                       device_group="test_non_existing_device_group", report_creation_time=123,
                       report_creation_time_filter="eq"), 200, data=None, last_id=None)
    everything = call(nebula, "list_reports", device_group=group, page_size=1000)
    expect_answer(everything, 200)
    data = everything["reply"]["data"]
    expect(data, "the agent's reports are listed")
    expect(all(report["device_group"] == group for report in data), "filtered by group")
    for key in ("hostname", "report_creation_time", "updated", "memory_usage", "root_disk_usage",
                "cpu_usage", "apps_containers", "current_device_group_config"):
        expect(key in data[0], f"a report has {key}")
    times = [report["report_creation_time"] for report in data]
    expect(times == sorted(times), "oldest first")
    # Paging one by one with upstream's cursor (`last_id["$oid"]`) walks the same reports.
    paged, last_id = [], None
    while True:
        page = call(nebula, "list_reports", device_group=group, page_size=1, last_id=last_id)
        expect_answer(page, 200)
        if page["reply"]["data"] is None:
            expect(page["reply"]["last_id"] is None, "past the end both are null")
            break
        paged += page["reply"]["data"]
        last_id = page["reply"]["last_id"]["$oid"]
        expect(len(paged) <= len(data) + 5, "paging ends")
    expect(paged[:len(data)] == data, "pages join into the whole list")
    hostname = data[0]["hostname"]
    by_host = call(nebula, "list_reports", hostname=hostname, device_group=group, page_size=1000)
    expect(all(report["hostname"] == hostname for report in by_host["reply"]["data"]), "filtered by hostname")
    # The SDK's default filter is `gt`: reports made after a time.
    later = call(nebula, "list_reports", device_group=group, report_creation_time=times[0], page_size=1000)
    later_times = [report["report_creation_time"] for report in later["reply"]["data"] or []]
    expect(later_times and all(time > times[0] for time in later_times),
           "gt filter: the reports after the first one's time, and only those")
    future = call(nebula, "list_reports", device_group=group, report_creation_time=int(time.time()) + 3600)
    expect_answer(future, 200, data=None, last_id=None)
    split = 0
    for updated in (True, False):
        chosen = call(nebula, "list_reports", device_group=group, updated=updated, page_size=1000)
        chosen = chosen["reply"]["data"] or []
        expect(all(report["updated"] is updated for report in chosen), f"updated={updated} filter")
        split += len(chosen)
    # Together they are every report (more may have arrived meanwhile).
    expect(split >= len(data), "updated=True and updated=False cover every report")


def main():
    nebula = Nebula(username=os.environ["NEBULA_SDK_USER"], password=os.environ["NEBULA_SDK_PASSWORD"],
                    host_uri=os.environ["NEBULA_SDK_URL"], request_timeout=30)
    prefix = os.environ["NEBULA_SDK_PREFIX"]
    try:
        app = apps(nebula, prefix)
        users(nebula, prefix, app)
        device_groups(nebula, prefix, app)
        cron_jobs(nebula, prefix)
        reports(nebula, os.environ["NEBULA_SDK_GROUP"])
        methods = {name for name in dir(Nebula) if not name.startswith("_") and callable(getattr(Nebula, name))}
        unchecked = methods - called - PENDING
        expect(not unchecked, f"SDK methods neither checked nor pending: {sorted(unchecked)}")
        expect(not (called & PENDING), f"checked but still listed as pending: {sorted(called & PENDING)}")
    except Mismatch as mismatch:
        print(f"MISMATCH: {mismatch}", file=sys.stderr)
        sys.exit(1)
    print(f"{len(called)} SDK methods answer as upstream's; pending: {len(PENDING)}")


if __name__ == "__main__":
    main()
