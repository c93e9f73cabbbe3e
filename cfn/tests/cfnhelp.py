#!/usr/bin/env python3
"""Helpers for cfn/tests/run: render the stack's UserData, check it against cloud-init 19.3, act out
the parts of cloud-init the sandbox needs (write_files, runcmd), and check a cron.d file.

Subcommands (all print to stdout, exit non-zero with a message on stderr when a check fails):
  render-userdata TEMPLATE [NAME=VALUE ...]   the decoded #cloud-config, ${...} substituted
  check-cloud-config FILE                     only keys that cloud-init 19.3 and 22.x both know
  write-files FILE                            write each write_files entry (path, owner, permissions;
                                              plain or gz+b64 content)
  extract-file FILE PATH                      the (decoded) content of the write_files entry for PATH
  embed-bootstrap TEMPLATE SCRIPT             put SCRIPT, gzip then base64, into the template's
                                              gz+b64 write_files entry (rewrites TEMPLATE)
  check-bootstrap TEMPLATE SCRIPT             that entry decodes to SCRIPT byte for byte
  guard-view TEMPLATE OUT                     the template as JSON with that entry decoded in place
                                              (plain 'content: |'), what the cfn-guard rules read
  userdata-worst-case TEMPLATE                the UserData's raw size with every parameter (and
                                              pseudo parameter and resource name) at its longest
  runcmd FILE                                 the runcmd entries as one shell script, like cloud-init
  check-crond FILE USER                       a valid cron.d file with one job for USER; prints its
                                              SHELL, PATH and command, one per line (NUL-free)
  mutants TEMPLATE DIR                        write DIR/NN-<rule>.json, each breaking one guard rule,
                                              and DIR/00-unmutated.json; list them as rule<TAB>what
  check-schedule-pattern TEMPLATE             Schedule's AllowedPattern accepts what cron runs and
                                              refuses what it would not (good and bad schedules,
                                              and every number around each field's range)
  template-value TEMPLATE PATH                a value of the template, e.g. Parameters.BackupUser.Default
  write-mbr FILE                              an MBR with one empty Linux partition (from sector 2048,
                                              64 MiB) at the start of FILE: a disk that is not blank and
                                              not the bootstrap's file system
"""

import base64
import copy
import gzip
import json
import os
import pwd
import grp
import re
import shlex
import struct
import sys

import yaml


# ----------------------------------------------------------------------------- CloudFormation YAML
class CfnLoader(yaml.SafeLoader):
    """YAML loader that turns the short-form intrinsic tags (!Sub, !Ref, ...) into their long form."""


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else "Fn::" + suffix
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _tag)


def load_template(path):
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=CfnLoader)  # noqa: S506 (SafeLoader subclass)


SUB_RE = re.compile(r"\$\{([^}]*)\}")


def fn_sub(template, values):
    """Fn::Sub with one string argument: ${Name} from values, ${!Literal} -> ${Literal}."""

    def repl(m):
        name = m.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name not in values:
            raise SystemExit(f"Fn::Sub: no value for ${{{name}}} (pass {name}=...)")
        return str(values[name])

    return SUB_RE.sub(repl, template)


def userdata_sub(template):
    """The Fn::Sub string inside the launch template's Fn::Base64 UserData."""
    lts = [
        r
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::LaunchTemplate"
        and "UserData" in r["Properties"]["LaunchTemplateData"]
    ]
    if len(lts) != 1:
        raise SystemExit(f"expected one launch template with UserData, found {len(lts)}")
    ud = lts[0]["Properties"]["LaunchTemplateData"]["UserData"]
    sub = ud["Fn::Base64"]["Fn::Sub"]
    if not isinstance(sub, str):
        raise SystemExit("UserData: expected Fn::Base64 of a one-argument Fn::Sub")
    return sub


def render_userdata(template_path, assignments):
    t = load_template(template_path)
    values = {
        "AWS::Partition": "aws",
        "AWS::Region": "us-east-1",
        "AWS::StackName": "s3backup",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::AccountId": "123456789012",
    }
    for name, p in t.get("Parameters", {}).items():
        if "Default" in p:
            values[name] = p["Default"]
    for a in assignments:
        k, _, v = a.partition("=")
        values[k] = v
    text = fn_sub(userdata_sub(t), values)
    # What EC2 hands the instance is the base64 of this text: check the round trip and the 16 KiB cap.
    raw = base64.b64decode(base64.b64encode(text.encode()))
    if len(raw) > 16384:
        raise SystemExit(f"UserData is {len(raw)} bytes; EC2 allows 16384")
    return text


# ----------------------------------------------------------------------------- cloud-config checks
# Top-level keys read by the config modules of cloud-init 19.3 (cloudinit/config/cc_*.py at tag 19.3,
# plus the keys of cloudinit/distros and stages that user data may set). Amazon Linux 2 ships 19.3;
# Amazon Linux 2023 ships 22.x, which knows all of these too. A key outside this list is silently
# ignored by 19.3, so the bootstrap would half-run on AL2: reject it here.
CLOUD_INIT_19_3_KEYS = {
    "apt", "apt_pipelining", "apt_preserve_sources_list", "bootcmd", "byobu_by_default",
    "ca-certs", "chef", "chpasswd", "debconf_selections", "disable_ec2_metadata", "disable_root",
    "disable_root_opts", "disk_setup", "fan", "final_message", "fqdn", "fs_setup", "groups",
    "growpart", "grub_dpkg", "hostname", "landscape", "locale", "locale_configfile", "lxd",
    "manage_etc_hosts", "manage_resolv_conf", "mcollective", "mount_default_fields", "mounts",
    "no_ssh_fingerprints", "ntp", "output", "package_reboot_if_required", "package_update",
    "package_upgrade", "packages", "password", "phone_home", "power_state", "preserve_hostname",
    "puppet", "random_seed", "resize_rootfs", "resolv_conf",
    "rh_subscription", "rsyslog", "runcmd", "salt_minion", "snap", "spacewalk",
    "ssh_authorized_keys", "ssh_deletekeys", "ssh_genkeytypes", "ssh_keys", "ssh_pwauth",
    "swap", "timezone", "ubuntu_advantage", "user", "users", "write_files", "yum_repos",
    "zypper",
}
# Keys of one write_files entry in 19.3 (cc_write_files.py); 'defer' and 'append' came later.
WRITE_FILES_19_3_KEYS = {"path", "content", "owner", "permissions", "encoding"}


def load_cloud_config(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.startswith("#cloud-config\n"):
        raise SystemExit(f"{path}: does not start with a '#cloud-config' line")
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise SystemExit(f"{path}: not a YAML mapping")
    return doc


def check_cloud_config(path):
    doc = load_cloud_config(path)
    unknown = sorted(set(doc) - CLOUD_INIT_19_3_KEYS)
    if unknown:
        raise SystemExit(f"{path}: keys unknown to cloud-init 19.3: {unknown}")
    for i, wf in enumerate(doc.get("write_files", [])):
        extra = sorted(set(wf) - WRITE_FILES_19_3_KEYS)
        if extra:
            raise SystemExit(f"{path}: write_files[{i}] has keys unknown to 19.3: {extra}")
        owner = wf.get("owner", "root:root")
        if owner.split(":")[0] != "root":
            # write_files runs before users are created on AL2.
            raise SystemExit(f"{path}: write_files[{i}] owner {owner!r}: must be root on AL2")
        perms = wf.get("permissions")
        if not isinstance(perms, str) or not re.fullmatch(r"0[0-7]{3}", perms):
            raise SystemExit(f"{path}: write_files[{i}] permissions must be a quoted octal string")
    if not doc.get("runcmd"):
        raise SystemExit(f"{path}: no runcmd")
    print(f"{path}: top-level keys {sorted(doc)} all known to cloud-init 19.3")


def wf_content(wf):
    """The bytes of a write_files entry, decoded as cc_write_files does for the encodings we use."""
    enc = wf.get("encoding")
    content = wf.get("content", "")
    if not enc:
        return content.encode("utf-8")
    if enc in ("gz+b64", "gzip+base64", "gz+base64", "gzip+b64"):
        return gzip.decompress(base64.b64decode(content))
    raise SystemExit(f"write-files: encoding {enc!r} is not supported here")


def write_files(path):
    """What cc_write_files does, for the entries we use (plain or gz+b64 content)."""
    for wf in load_cloud_config(path).get("write_files", []):
        target = wf["path"]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(wf_content(wf))
        user, _, group = wf.get("owner", "root:root").partition(":")
        os.chown(target, pwd.getpwnam(user).pw_uid, grp.getgrnam(group or user).gr_gid)
        os.chmod(target, int(wf.get("permissions", "0644"), 8))
        print(f"wrote {target}")


def extract_file(path, target):
    """The content of the write_files entry for target."""
    for wf in load_cloud_config(path).get("write_files", []):
        if wf["path"] == target:
            sys.stdout.buffer.write(wf_content(wf))
            return
    raise SystemExit(f"{path}: no write_files entry for {target}")


def runcmd_script(path):
    """cc_runcmd turns the list into a shell script: lists are quoted word by word."""
    lines = ["#!/bin/sh"]
    for cmd in load_cloud_config(path)["runcmd"]:
        lines.append(cmd if isinstance(cmd, str) else " ".join(shlex.quote(str(w)) for w in cmd))
    print("\n".join(lines))


# ----------------------------------------------------------------------------- the embedded bootstrap
# The one gz+b64 write_files entry of the UserData: "encoding: gz+b64" then "content: <base64>" on
# the next line, both at the entry's indentation.
EMBED_RE = re.compile(r"(\n(?P<ind> +)encoding: gz\+b64\n(?P=ind)content: )(?P<b64>[A-Za-z0-9+/=]+|PLACEHOLDER)\n")


def _embedded(text):
    ms = list(EMBED_RE.finditer(text))
    if len(ms) != 1:
        raise SystemExit(f"expected one 'encoding: gz+b64' write_files entry, found {len(ms)}")
    return ms[0]


def embed_bootstrap(template_path, script_path):
    with open(template_path, encoding="utf-8") as f:
        text = f.read()
    with open(script_path, "rb") as f:
        data = f.read()
    b64 = base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode()
    m = _embedded(text)
    text = text[:m.start("b64")] + b64 + text[m.end("b64"):]
    with open(template_path, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"{template_path}: {script_path} embedded ({len(data)} bytes, {len(b64)} as gz+b64)")


def check_bootstrap(template_path, script_path):
    with open(template_path, encoding="utf-8") as f:
        m = _embedded(f.read())
    with open(script_path, "rb") as f:
        want = f.read()
    try:
        got = gzip.decompress(base64.b64decode(m.group("b64"), validate=True))
    except Exception as e:  # noqa: BLE001 (any decoding error is the same finding)
        raise SystemExit(f"{template_path}: the gz+b64 entry does not decode: {e}")
    if got != want:
        raise SystemExit(f"{template_path}: the embedded bootstrap differs from {script_path}; run "
                         f"python3 cfn/tests/cfnhelp.py embed-bootstrap {template_path} {script_path}")
    print(f"{template_path}: the embedded bootstrap is {script_path} ({len(want)} bytes)")


def decoded_userdata(sub):
    """The UserData Fn::Sub string with its gz+b64 entry decoded into a plain 'content: |' block."""
    m = _embedded(sub)
    script = gzip.decompress(base64.b64decode(m.group("b64"))).decode("utf-8")
    ind = m.group("ind")
    block = "".join(ind + "  " + line if line else line for line in script.splitlines(True))
    return sub[:m.start()] + "\n" + ind + "content: |\n" + block + sub[m.end():]


def guard_view(template_path, out):
    t = load_template(template_path)
    ud = t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    ud["Fn::Base64"]["Fn::Sub"] = decoded_userdata(ud["Fn::Base64"]["Fn::Sub"])
    with open(out, "w", encoding="utf-8") as f:
        json.dump(t, f, indent=1)


# What no parameter constraint bounds: the longest value each can take (CloudFormation's limits).
LONGEST = {
    "AWS::StackName": 128, "AWS::Region": 25, "AWS::Partition": 13, "AWS::AccountId": 12,
    "AWS::URLSuffix": 20, "AWS::StackId": 150,
    "ImagesBucket": 63,  # an S3 bucket name
    "BackupVolume": 21,  # vol- and 17 hex digits
}


def userdata_worst_case(template_path):
    """The raw UserData with every ${...} at its longest: String parameters at MaxLength (each
    must have one), Number parameters at their widest MinValue/MaxValue, the rest from LONGEST."""
    t = load_template(template_path)
    sub = userdata_sub(t)
    values = {}
    for name in set(SUB_RE.findall(sub)):
        if name.startswith("!"):
            continue
        p = t["Parameters"].get(name)
        if p is None:
            if name not in LONGEST:
                raise SystemExit(f"UserData: no known longest value for ${{{name}}}")
            values[name] = "x" * LONGEST[name]
        elif p["Type"] == "Number":
            values[name] = "9" * max(len(str(p["MinValue"])), len(str(p["MaxValue"])))
        elif "MaxLength" in p:
            values[name] = "x" * int(p["MaxLength"])
        elif "AllowedValues" in p:
            values[name] = max(map(str, p["AllowedValues"]), key=len)
        else:
            raise SystemExit(f"UserData: parameter {name} has no MaxLength: its UserData has no bound")
    raw = fn_sub(sub, values).encode("utf-8")
    print(len(raw))


# ----------------------------------------------------------------------------- cron.d
CRON_FIELD = re.compile(r"^(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?(,(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?)*$")
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
MONTHS = "jan feb mar apr may jun jul aug sep oct nov dec".split()
DAYS = "sun mon tue wed thu fri sat".split()
ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")


def _check_field(i, field):
    if not CRON_FIELD.match(field):
        raise SystemExit(f"cron field {i + 1} {field!r} is malformed")
    lo, hi = CRON_RANGES[i]
    for part in field.split(","):
        part = part.split("/")[0]
        for v in part.split("-"):
            if v == "*":
                continue
            if v.isdigit():
                if not lo <= int(v) <= hi:
                    raise SystemExit(f"cron field {i + 1}: {v} outside {lo}-{hi}")
            elif not ((i == 3 and v.lower() in MONTHS) or (i == 4 and v.lower() in DAYS)):
                raise SystemExit(f"cron field {i + 1}: {v!r} is not a number or name")


GOOD_SCHEDULES = [
    "17 3 * * *", "*/15 1-5 * * mon-fri", "* * * * *", "0 0 1 jan *", "59 23 31 12 7", "0 0 * * 0",
    "5,35 */2 1-15/3 1-12 0-7", "00 05 01 01 0", "0-59/5 0-23/2 1-31/10 jan-dec/2 sun-sat",
    "30 4 1,15 * 5", "0 22 * * 1-5", "23 0-20/2 * * *", "0 0 * feb,aug sun",
]
BAD_SCHEDULES = [
    "99 * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * 32 * *", "* * * 0 *", "* * * 13 *",
    "* * * * 8", "*/0 * * * *", "5/10 * * * *", "* * * * Mon", "* * * JAN *", "* * * *",
    "* * * * * *", "*  * * * *", "@daily", "1,,2 * * * *", ",1 * * * *", "1, * * * *",
    "* * * * sunday", "1-2-3 * * * *", "-1 * * * *", "*/100 * * * *", " * * * * *", "* * * * * ",
    "a * * * *", "* * * * mon-", "** * * * *", "*/ * * * *", "17 3 * * *\n", "17\t3 * * *",
    "17 3 * * 1 echo", "* * L * *", "* * * * 5#3", "? * * * *",
]


def check_schedule_pattern(template_path):
    p = load_template(template_path)["Parameters"]["Schedule"]
    pat = re.compile(p["AllowedPattern"])
    full = lambda v: pat.search(v) is not None and len(v) <= int(p["MaxLength"])  # noqa: E731
    bad = [g for g in GOOD_SCHEDULES if not full(g)]
    bad += [f"accepted: {b!r}" for b in BAD_SCHEDULES if full(b)]
    if not full(p["Default"]):
        bad.append(f"the default {p['Default']!r} is refused")
    # Every number from one below to one above each field's range, alone and as a range's end,
    # against cron's own ranges; and the good schedules through cron.d's field checker.
    n = 0
    for i, (lo, hi) in enumerate(CRON_RANGES):
        for v in range(max(lo - 1, 0), hi + 2):
            for field in (str(v), f"{lo}-{v}", f"{v}-{hi}/2"):
                fields = ["*"] * 5
                fields[i] = field
                sched = " ".join(fields)
                want = lo <= v <= hi
                n += 1
                if full(sched) != want:
                    bad.append(f"{sched!r}: pattern says {full(sched)}, cron's range {lo}-{hi} says {want}")
    for g in GOOD_SCHEDULES:
        try:
            for i, f in enumerate(g.split(" ")):
                _check_field(i, f)
        except SystemExit as e:
            bad.append(f"{g!r} (a good schedule) fails the cron.d checker: {e}")
    if bad:
        raise SystemExit("Schedule's AllowedPattern:\n  " + "\n  ".join(bad))
    print(f"Schedule's AllowedPattern: {len(GOOD_SCHEDULES)} good accepted, {len(BAD_SCHEDULES)} bad "
          f"refused, {n} field values agree with cron's ranges")


def check_crond(path, user):
    """A system crontab (cron.d) line is: 5 time fields (or @keyword), user, command."""
    st = os.stat(path)
    name = os.path.basename(path)
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise SystemExit(f"{path}: Debian's cron ignores cron.d files whose name has other characters")
    if st.st_uid != 0 or st.st_gid != 0:
        raise SystemExit(f"{path}: owned by {st.st_uid}:{st.st_gid}, not root:root")
    if st.st_mode & 0o7777 != 0o644:
        raise SystemExit(f"{path}: mode {oct(st.st_mode & 0o7777)}, not 0644")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.endswith("\n"):
        raise SystemExit(f"{path}: cron ignores a last line without a newline")
    env, jobs = {}, []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if ENV_LINE.match(s):
            k, _, v = s.partition("=")
            env[k.strip()] = v.strip()
            continue
        words = s.split()
        if words[0].startswith("@"):
            if words[0] not in ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily",
                                "@midnight", "@hourly"):
                raise SystemExit(f"{path}: unknown {words[0]}")
            times, rest = words[:1], s.split(None, 2)[1:]
        else:
            for i, fld in enumerate(words[:5]):
                _check_field(i, fld)
            times, rest = words[:5], s.split(None, 6)[5:]
        if len(rest) != 2:
            raise SystemExit(f"{path}: job line without user and command: {line!r}")
        jobs.append((times, rest[0], rest[1]))
    if len(jobs) != 1:
        raise SystemExit(f"{path}: expected exactly one job, found {len(jobs)}")
    times, job_user, command = jobs[0]
    if job_user != user:
        raise SystemExit(f"{path}: job runs as {job_user!r}, expected {user!r}")
    # cron turns an unescaped % into a newline (the rest becomes stdin): refuse any here.
    if re.search(r"(?<!\\)%", command):
        raise SystemExit(f"{path}: unescaped % in the command")
    command = command.replace("\\%", "%")
    for k in ("SHELL", "PATH"):
        if k not in env:
            raise SystemExit(f"{path}: no {k}= line")
    print(env["SHELL"])
    print(env["PATH"])
    print(command)


# ----------------------------------------------------------------------------- guard mutants
def _stmts(t):
    return t["Resources"]["InstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]


def _stmt(t, sid):
    return next(s for s in _stmts(t) if s.get("Sid") == sid)


def _restore_if(t):
    """The Fn::If list of the conditional s3:RestoreObject statement."""
    return next(s for s in _stmts(t) if "Fn::If" in s)["Fn::If"]


def _restore_unconditional(t):
    st = _stmts(t)
    i = next(i for i, s in enumerate(st) if "Fn::If" in s)
    st[i] = st[i]["Fn::If"][1]


def _ud_replace(old, new):
    def f(t):
        ud = t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
        sub = ud["Fn::Base64"]["Fn::Sub"]
        if old not in sub:
            raise SystemExit(f"mutant: {old!r} not in UserData")
        ud["Fn::Base64"]["Fn::Sub"] = sub.replace(old, new)
    return f


def _ud_replace_after(anchor, old, new):
    """Replace the first occurrence of old after anchor."""
    def f(t):
        ud = t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
        sub = ud["Fn::Base64"]["Fn::Sub"]
        i = sub.index(anchor)
        j = sub.index(old, i)
        ud["Fn::Base64"]["Fn::Sub"] = sub[:j] + new + sub[j + len(old):]
    return f


def _ud_move(line, before):
    """Move line (removed where it is) to just before the first occurrence of before."""
    def f(t):
        ud = t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
        sub = ud["Fn::Base64"]["Fn::Sub"]
        i = sub.index(line)
        start = sub.rindex("\n", 0, i) + 1
        indent = sub[start:i]
        sub = sub[:start] + sub[i + len(line):]
        j = sub.index(before)
        ud["Fn::Base64"]["Fn::Sub"] = sub[:j] + line + indent + sub[j:]
    return f


def _alarm(t, name):
    return t["Resources"][name]["Properties"]


def _asg(t):
    return t["Resources"]["AutoScalingGroup"]


def _vol(t):
    return t["Resources"]["BackupVolume"]


def _dlm(t):
    return t["Resources"]["BackupSnapshots"]["Properties"]


def _snap_stmt(t, sid):
    return next(s for s in t["Resources"]["SnapshotRole"]["Properties"]["Policies"][0]
                ["PolicyDocument"]["Statement"] if s.get("Sid") == sid)


def _silence_m1(t):
    return next(m for m in _alarm(t, "SilenceAlarm")["Metrics"] if "MetricStat" in m)


def _silence_expr(t):
    return next(m for m in _alarm(t, "SilenceAlarm")["Metrics"] if "Expression" in m)


def _event_pattern(t):
    return t["Resources"]["SnapshotFailureRule"]["Properties"]["EventPattern"]


def _topic_stmts(t):
    return t["Resources"]["AlertTopicPolicy"]["Properties"]["PolicyDocument"]["Statement"]


def _key_stmts(t):
    return t["Resources"]["AlertKey"]["Properties"]["KeyPolicy"]["Statement"]


def _no_volume(t):
    t["Resources"].pop("BackupVolume")


def _plain_instance(t):
    t["Resources"]["Instance"] = {
        "Type": "AWS::EC2::Instance",
        "Properties": {"LaunchTemplate": {"LaunchTemplateId": {"Ref": "LaunchTemplate"},
                                          "Version": {"Fn::GetAtt": ["LaunchTemplate", "LatestVersionNumber"]}}}}


def _lc_rules(t):
    return t["Resources"]["ImagesBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]


def _lc_rule(t, rule_id):
    return next(r for r in _lc_rules(t) if r["Id"] == rule_id)


def _drop_lc_rule(rule_id):
    def f(t):
        _lc_rules(t).remove(_lc_rule(t, rule_id))
    return f


def _star_version(t):
    """One s3:*Version* statement on the images bucket's objects in place of the three."""
    for sid in ("ListImageVersions", "SeeImagesBucketVersioning"):
        _stmts(t).remove(_stmt(t, sid))
    _stmt(t, "ReadImageVersions").update(Action="s3:*Version*")


def _good_bucket(t):
    b = copy.deepcopy(t["Resources"]["ImagesBucket"])
    t["Resources"]["SecondBucket"] = b  # fully configured, but no bucket policy of its own


# (rule that must FAIL, what the mutant breaks, how)
MUTANTS = [
    ("s3_bucket_encrypted", "no BucketEncryption",
     lambda t: t["Resources"]["ImagesBucket"]["Properties"].pop("BucketEncryption")),
    ("s3_bucket_public_access_blocked", "RestrictPublicBuckets false",
     lambda t: t["Resources"]["ImagesBucket"]["Properties"]["PublicAccessBlockConfiguration"]
     .update(RestrictPublicBuckets=False)),
    ("s3_bucket_public_access_blocked", "no public access block",
     lambda t: t["Resources"]["ImagesBucket"]["Properties"].pop("PublicAccessBlockConfiguration")),
    ("s3_bucket_versioned", "versioning suspended",
     lambda t: t["Resources"]["ImagesBucket"]["Properties"]["VersioningConfiguration"]
     .update(Status="Suspended")),
    ("s3_bucket_owner_enforced", "ObjectWriter ownership",
     lambda t: t["Resources"]["ImagesBucket"]["Properties"]["OwnershipControls"]["Rules"][0]
     .update(ObjectOwnership="ObjectWriter")),
    ("s3_bucket_retained", "DeletionPolicy Delete",
     lambda t: t["Resources"]["ImagesBucket"].update(DeletionPolicy="Delete")),
    ("s3_bucket_retained", "no UpdateReplacePolicy",
     lambda t: t["Resources"]["ImagesBucket"].pop("UpdateReplacePolicy")),
    ("s3_bucket_denies_insecure_transport", "no bucket policy",
     lambda t: t["Resources"].pop("ImagesBucketPolicy")),
    ("s3_bucket_denies_insecure_transport", "policy allows instead of denying",
     lambda t: t["Resources"]["ImagesBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
     .update(Effect="Allow")),
    ("s3_bucket_denies_insecure_transport", "policy denies TLS instead of plain HTTP",
     lambda t: t["Resources"]["ImagesBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
     ["Condition"]["Bool"].update({"aws:SecureTransport": "true"})),
    ("s3_bucket_denies_insecure_transport", "a second bucket without a policy", _good_bucket),
    ("ec2_launch_template_imdsv2", "HttpTokens optional",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
     ["MetadataOptions"].update(HttpTokens="optional")),
    ("ec2_launch_template_imdsv2", "hop limit 2",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
     ["MetadataOptions"].update(HttpPutResponseHopLimit=2)),
    ("ec2_launch_template_imdsv2", "no MetadataOptions",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
     .pop("MetadataOptions")),
    ("ec2_no_standalone_instance", "a plain AWS::EC2::Instance", _plain_instance),
    ("ec2_no_standalone_instance", "a VolumeAttachment", lambda t: t["Resources"].update(Attach={
        "Type": "AWS::EC2::VolumeAttachment",
        "Properties": {"Device": "/dev/sdf", "InstanceId": "i-0123456789abcdef0",
                       "VolumeId": {"Ref": "BackupVolume"}}})),
    ("ec2_no_standalone_instance", "no Auto Scaling group", lambda t: t["Resources"].pop("AutoScalingGroup")),
    ("asg_singleton", "MaxSize 2", lambda t: _asg(t)["Properties"].update(MaxSize="2")),
    ("asg_singleton", "two zones", lambda t: _asg(t)["Properties"].update(
        AvailabilityZones=["us-east-1a", "us-east-1b"])),
    ("asg_singleton", "ELB health checks only", lambda t: _asg(t)["Properties"].update(HealthCheckType="ELB")),
    ("asg_singleton", "launch template pinned to version 1",
     lambda t: _asg(t)["Properties"]["LaunchTemplate"].update(Version="1")),
    ("asg_waits_for_signal", "no CreationPolicy", lambda t: _asg(t).pop("CreationPolicy")),
    ("asg_waits_for_signal", "MinInstancesInService 1",
     lambda t: _asg(t)["UpdatePolicy"]["AutoScalingRollingUpdate"].update(MinInstancesInService=1)),
    ("asg_waits_for_signal", "updates do not wait for signals",
     lambda t: _asg(t)["UpdatePolicy"]["AutoScalingRollingUpdate"].update(WaitOnResourceSignals=False)),
    ("asg_waits_for_signal", "no UpdatePolicy", lambda t: _asg(t).pop("UpdatePolicy")),
    ("asg_waits_for_signal", "rolling updates suspend nothing",
     lambda t: _asg(t)["UpdatePolicy"]["AutoScalingRollingUpdate"].pop("SuspendProcesses")),
    ("asg_waits_for_signal", "rolling updates let health checks replace the instance",
     lambda t: _asg(t)["UpdatePolicy"]["AutoScalingRollingUpdate"]["SuspendProcesses"].remove("HealthCheck")),
    ("asg_waits_for_signal", "rolling updates let AZRebalance run",
     lambda t: _asg(t)["UpdatePolicy"]["AutoScalingRollingUpdate"]["SuspendProcesses"].remove("AZRebalance")),
    ("backup_volume_kept", "no backup volume", _no_volume),
    ("backup_volume_kept", "DeletionPolicy Delete", lambda t: _vol(t).update(DeletionPolicy="Delete")),
    ("backup_volume_kept", "UpdateReplacePolicy Retain", lambda t: _vol(t).update(UpdateReplacePolicy="Retain")),
    ("backup_volume_kept", "gp2", lambda t: _vol(t)["Properties"].update(VolumeType="gp2")),
    ("backup_volume_kept", "fixed size", lambda t: _vol(t)["Properties"].update(Size=20)),
    ("backup_volume_kept", "no stack tag", lambda t: _vol(t)["Properties"].update(
        Tags=[x for x in _vol(t)["Properties"]["Tags"] if x["Key"] != "s3backup:stack"])),
    ("backup_volume_kept", "root volume kept on termination",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
     ["BlockDeviceMappings"][0]["Ebs"].update(DeleteOnTermination=False)),
    ("dlm_daily_snapshots", "no lifecycle policy", lambda t: t["Resources"].pop("BackupSnapshots")),
    ("dlm_daily_snapshots", "policy disabled", lambda t: _dlm(t).update(State="DISABLED")),
    ("dlm_daily_snapshots", "weekly snapshots", lambda t: _dlm(t)["PolicyDetails"]["Schedules"][0]
     ["CreateRule"].update(Interval=168)),
    ("dlm_daily_snapshots", "keeps 3 snapshots instead of SnapshotRetentionDays days",
     lambda t: _dlm(t)["PolicyDetails"]["Schedules"][0].update(RetainRule={"Count": 3})),
    ("dlm_daily_snapshots", "targets every volume tagged app=s3backup",
     lambda t: _dlm(t)["PolicyDetails"].update(TargetTags=[{"Key": "app", "Value": "s3backup"}])),
    ("dlm_role_least_privilege", "the broad DLM managed policy",
     lambda t: t["Resources"]["SnapshotRole"]["Properties"].update(ManagedPolicyArns=[
         {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSDataLifecycleManagerServiceRole"}])),
    ("dlm_role_least_privilege", "deletes any snapshot",
     lambda t: _snap_stmt(t, "PruneThisStacksSnapshots").pop("Condition")),
    ("dlm_role_least_privilege", "CreateSnapshot on '*'",
     lambda t: _snap_stmt(t, "SnapshotTheBackupVolume").update(Resource="*")),
    ("dlm_role_least_privilege", "ec2:* for the snapshots",
     lambda t: _snap_stmt(t, "TagTheSnapshots").update(Action="ec2:*")),
    ("dlm_role_least_privilege", "DLM's EventBridge actions on any rule",
     lambda t: _snap_stmt(t, "DlmManagedEventRules").update(
         Resource={"Fn::Sub": "arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:rule/*"})),
    ("dlm_role_least_privilege", "ec2:CopySnapshot from the managed policy",
     lambda t: _snap_stmt(t, "SeeVolumesAndSnapshots")["Action"].append("ec2:CopySnapshot")),
    ("recycle_bin_scoped", "a Recycle Bin rule for every snapshot in the region",
     lambda t: t["Resources"]["SnapshotRecycleBin"]["Properties"].pop("ResourceTags")),
    ("recycle_bin_scoped", "a Recycle Bin rule for another tag",
     lambda t: t["Resources"]["SnapshotRecycleBin"]["Properties"]["ResourceTags"][0].update(
         ResourceTagKey="app", ResourceTagValue="s3backup")),
    ("recycle_bin_scoped", "the Recycle Bin rule without its condition",
     lambda t: t["Resources"]["SnapshotRecycleBin"].pop("Condition")),
    ("recycle_bin_scoped", "the condition true at 0",
     lambda t: t["Conditions"].update(KeepsDeletedSnapshots={"Fn::Equals": [{"Ref": "RecycleBinDays"}, 0]})),
    ("recycle_bin_scoped", "RecycleBinDays on by default",
     lambda t: t["Parameters"]["RecycleBinDays"].update(Default=7)),
    ("recycle_bin_scoped", "no Recycle Bin rule",
     lambda t: t["Resources"].pop("SnapshotRecycleBin")),
    ("ec2_volumes_encrypted", "unencrypted root volume",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
     ["BlockDeviceMappings"][0]["Ebs"].update(Encrypted=False)),
    ("ec2_volumes_encrypted", "no root volume mapping",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
     .pop("BlockDeviceMappings")),
    ("ec2_volumes_encrypted", "an unencrypted extra volume",
     lambda t: t["Resources"].update(DataVolume={
         "Type": "AWS::EC2::Volume",
         "Properties": {"Size": 10, "AvailabilityZone": "us-east-1a", "Encrypted": False}})),
    ("ec2_no_key_pair", "KeyName in the launch template",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
     .update(KeyName="k")),
    ("ec2_security_group_no_ingress", "inline SSH ingress",
     lambda t: t["Resources"]["SecurityGroup"]["Properties"].update(SecurityGroupIngress=[
         {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "10.0.0.0/8"}])),
    ("ec2_security_group_no_ingress", "separate ingress resource",
     lambda t: t["Resources"].update(Ingress={
         "Type": "AWS::EC2::SecurityGroupIngress",
         "Properties": {"GroupId": {"Fn::GetAtt": ["SecurityGroup", "GroupId"]},
                        "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
                        "CidrIp": "10.0.0.0/8"}})),
    ("ec2_ami_from_ssm_parameter", "AMI parameter is a plain image id",
     lambda t: t["Parameters"]["AmiParameter"].update(Type="AWS::EC2::Image::Id",
                                                      Default="ami-0123456789abcdef0")),
    ("ec2_ami_from_ssm_parameter", "hard-coded AMI",
     lambda t: t["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"].update(
         ImageId="ami-0123456789abcdef0")),
    ("ec2_ami_from_ssm_parameter", "default AMI still Amazon Linux 2",
     lambda t: t["Parameters"]["AmiParameter"].update(
         Default="/aws/service/ami-amazon-linux-latest/amzn2-ami-hvm-x86_64-gp2")),
    ("ec2_ami_from_ssm_parameter", "default instance type t3.large",
     lambda t: t["Parameters"]["InstanceType"].update(Default="t3.large")),
    ("iam_role_trusts_ec2_only", "trusts Lambda too",
     lambda t: t["Resources"]["InstanceRole"]["Properties"]["AssumeRolePolicyDocument"]
     ["Statement"][0]["Principal"].update(Service=["ec2.amazonaws.com", "lambda.amazonaws.com"])),
    ("iam_role_managed_policy_is_ssm_core", "AdministratorAccess attached",
     lambda t: t["Resources"]["InstanceRole"]["Properties"]["ManagedPolicyArns"].append(
         {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AdministratorAccess"})),
    ("iam_role_managed_policy_is_ssm_core", "no managed policy (no Session Manager)",
     lambda t: t["Resources"]["InstanceRole"]["Properties"].pop("ManagedPolicyArns")),
    ("iam_role_inline_policy_exact", "an extra statement (s3:PutObject)",
     lambda t: t["Resources"]["InstanceRole"]["Properties"]["Policies"][0]["PolicyDocument"]
     ["Statement"].append({"Effect": "Allow", "Action": "s3:PutObject", "Resource": {
         "Fn::Sub": "arn:${AWS::Partition}:s3:::${ImagesBucket}/*"}})),
    ("iam_role_inline_policy_exact", "s3:ListBucket on every bucket",
     lambda t: _stmt(t, "ListImagesBucket").update(Resource={"Fn::Sub": "arn:${AWS::Partition}:s3:::*"})),
    ("iam_role_inline_policy_exact", "s3:GetObject on the whole artifact bucket",
     lambda t: _stmt(t, "ReadTheOneArtifact").update(
         Resource={"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/*"})),
    ("iam_role_inline_policy_exact", "an action list with s3:DeleteObject",
     lambda t: _stmt(t, "ReadImages").update(Action=["s3:GetObject", "s3:DeleteObject"])),
    ("iam_role_inline_policy_exact", "s3:* instead of s3:GetObject",
     lambda t: _stmt(t, "ReadImages").update(Action="s3:*")),
    ("iam_role_inline_policy_exact", "AttachVolume on any volume",
     lambda t: _stmt(t, "AttachTheBackupVolume").update(
         Resource={"Fn::Sub": "arn:${AWS::Partition}:ec2:${AWS::Region}:${AWS::AccountId}:volume/*"})),
    ("iam_role_inline_policy_exact", "AttachVolume to any instance",
     lambda t: _stmt(t, "AttachToThisStacksInstances").pop("Condition")),
    ("iam_role_inline_policy_exact", "ec2:* on '*'",
     lambda t: _stmt(t, "SeeWhoHoldsTheVolume").update(Action="ec2:*")),
    ("iam_role_inline_policy_exact", "AttachVolume on '*'",
     lambda t: _stmt(t, "SeeWhoHoldsTheVolume").update(Action="ec2:AttachVolume")),
    ("iam_role_inline_policy_exact", "PutMetricData in any namespace",
     lambda t: _stmt(t, "PublishTheJobsMetrics").pop("Condition")),
    ("iam_role_inline_policy_exact", "PutMetricData in a fixed other namespace",
     lambda t: _stmt(t, "PublishTheJobsMetrics")["Condition"]["StringEquals"].update(
         {"cloudwatch:namespace": "AWS/EC2"})),
    ("iam_role_inline_policy_exact", "cloudwatch:* instead of PutMetricData",
     lambda t: _stmt(t, "PublishTheJobsMetrics").update(Action="cloudwatch:*")),
    ("iam_restore_archived_only_when_on", "RestoreArchivedDays 0: s3:RestoreObject granted unconditionally",
     _restore_unconditional),
    ("iam_restore_archived_only_when_on", "RestoreArchivedDays 0: the other branch grants s3:RestoreObject too",
     lambda t: _restore_if(t).__setitem__(2, copy.deepcopy(_restore_if(t)[1]))),
    ("iam_restore_archived_only_when_on", "RestoreArchivedDays 0: the condition is true at 0",
     lambda t: t["Conditions"].update(RestoresArchived={"Fn::Equals": [{"Ref": "RestoreArchivedDays"}, 0]})),
    ("iam_restore_archived_only_when_on", "RestoreArchivedDays 0: a statement with s3:Restore*",
     lambda t: _stmt(t, "ReadImages").update(Action=["s3:GetObject", "s3:Restore*"])),
    ("iam_restore_archived_only_when_on", "default RestoreArchivedDays 7 (on unless turned off)",
     lambda t: t["Parameters"]["RestoreArchivedDays"].update(Default=7)),
    ("iam_restore_archived_only_when_on", "on: s3:RestoreObject on every bucket",
     lambda t: _restore_if(t)[1].update(Resource={"Fn::Sub": "arn:${AWS::Partition}:s3:::*"})),
    ("iam_restore_archived_only_when_on", "on: s3:RestoreObject and s3:PutObject",
     lambda t: _restore_if(t)[1].update(Action=["s3:RestoreObject", "s3:PutObject"])),
    ("iam_restore_archived_only_when_on", "on: s3:* instead of s3:RestoreObject",
     lambda t: _restore_if(t)[1].update(Action="s3:*")),
    ("iam_restore_archived_only_when_on", "on: no restore statement at all",
     lambda t: _stmts(t).remove(next(s for s in _stmts(t) if "Fn::If" in s))),
    ("iam_restore_archived_only_when_on", "on: the job never gets --restore-archived",
     _ud_replace_after('"$BIN" cron-entry', '--restore-archived "$RESTORE_ARCHIVED_DAYS"', "")),
    ("history_on_the_volume", "the cron job without --history-dir",
     _ud_replace_after('"$BIN" cron-entry', '--history-dir "$HISTORY_DIR"', "")),
    ("history_on_the_volume", "the first backup without --history-dir",
     _ud_replace_after('"$BIN" --json', '--history-dir "$HISTORY_DIR"', "")),
    ("history_on_the_volume", "history on the root volume",
     _ud_replace("HISTORY_DIR=$MNT/history\n", "HISTORY_DIR=/var/lib/s3backup-history\n")),
    ("history_on_the_volume", "a fixed --keep-days",
     _ud_replace("HISTORY_DAYS='${HistoryDays}'", "HISTORY_DAYS='30'")),
    ("history_on_the_volume", "BackupDir may be the history folder",
     lambda t: t["Parameters"]["BackupDir"].update(AllowedPattern=t["Parameters"]["BackupDir"]["AllowedPattern"]
                                                   .replace("(state|history)", "state"))),
    ("history_on_the_volume", "HistoryDays default 0",
     lambda t: t["Parameters"]["HistoryDays"].update(Default=0)),
    ("s3_images_bucket_versions_expire", "no lifecycle rule on the images bucket",
     lambda t: t["Resources"]["ImagesBucket"]["Properties"].pop("LifecycleConfiguration")),
    ("s3_images_bucket_versions_expire", "noncurrent versions never expire (no version rule)",
     _drop_lc_rule("ExpireOlderVersions")),
    ("s3_images_bucket_versions_expire", "the version rule disabled",
     lambda t: _lc_rule(t, "ExpireOlderVersions").update(Status="Disabled")),
    ("s3_images_bucket_versions_expire", "versions expire after a fixed 30 days, not BucketVersionDays",
     lambda t: _lc_rule(t, "ExpireOlderVersions")["NoncurrentVersionExpiration"].update(NoncurrentDays=30)),
    ("s3_images_bucket_versions_expire", "versions expire only under a prefix",
     lambda t: _lc_rule(t, "ExpireOlderVersions").update(Prefix="photos/")),
    ("s3_images_bucket_versions_expire", "the 100 newest versions of each object kept past BucketVersionDays",
     lambda t: _lc_rule(t, "ExpireOlderVersions")["NoncurrentVersionExpiration"].update(
         NewerNoncurrentVersions=100)),
    ("s3_images_bucket_versions_expire", "BucketVersionDays MinValue 1 (a version may expire before a daily run sees it)",
     lambda t: t["Parameters"]["BucketVersionDays"].update(MinValue=1)),
    ("s3_images_bucket_versions_expire", "BucketVersionDays without MinValue",
     lambda t: t["Parameters"]["BucketVersionDays"].pop("MinValue")),
    ("s3_images_bucket_versions_expire", "BucketVersionDays default 30",
     lambda t: t["Parameters"]["BucketVersionDays"].update(Default=30)),
    ("s3_images_bucket_versions_expire", "incomplete multipart uploads never aborted",
     _drop_lc_rule("AbortIncompleteMultipartUploads")),
    ("s3_images_bucket_versions_expire", "incomplete multipart uploads aborted after 30 days",
     lambda t: _lc_rule(t, "AbortIncompleteMultipartUploads")["AbortIncompleteMultipartUpload"].update(
         DaysAfterInitiation=30)),
    ("s3_images_bucket_versions_expire", "a rule that expires current objects after a year",
     lambda t: _lc_rule(t, "AbortIncompleteMultipartUploads").update(ExpirationInDays=365)),
    ("s3_images_bucket_versions_expire", "a rule that moves objects to Glacier",
     lambda t: _lc_rules(t).append({"Id": "Archive", "Status": "Enabled", "Transitions": [
         {"StorageClass": "GLACIER", "TransitionInDays": 30}]})),
    ("s3_images_bucket_versions_expire", "a rule that moves older versions to Glacier first",
     lambda t: _lc_rule(t, "ExpireOlderVersions").update(NoncurrentVersionTransitions=[
         {"StorageClass": "GLACIER", "TransitionInDays": 1}])),
    ("iam_versions_images_bucket_only", "s3:GetObjectVersion on '*'",
     lambda t: _stmt(t, "ReadImageVersions").update(Resource="*")),
    ("iam_versions_images_bucket_only", "s3:GetObjectVersion on every bucket's objects",
     lambda t: _stmt(t, "ReadImageVersions").update(Resource={"Fn::Sub": "arn:${AWS::Partition}:s3:::*/*"})),
    ("iam_versions_images_bucket_only", "s3:GetObjectVersion on the artifact bucket too",
     lambda t: _stmts(t).append({"Effect": "Allow", "Action": "s3:GetObjectVersion", "Resource": {
         "Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/*"}})),
    ("iam_versions_images_bucket_only", "s3:ListBucketVersions on '*'",
     lambda t: _stmt(t, "ListImageVersions").update(Resource="*")),
    ("iam_versions_images_bucket_only", "s3:ListBucketVersions on every bucket",
     lambda t: _stmt(t, "ListImageVersions").update(Resource={"Fn::Sub": "arn:${AWS::Partition}:s3:::*"})),
    ("iam_versions_images_bucket_only", "s3:GetBucketVersioning on '*'",
     lambda t: _stmt(t, "SeeImagesBucketVersioning").update(Resource="*")),
    ("iam_versions_images_bucket_only", "s3:GetBucketVersioning together with s3:PutBucketVersioning",
     lambda t: _stmt(t, "SeeImagesBucketVersioning").update(
         Action=["s3:GetBucketVersioning", "s3:PutBucketVersioning"])),
    ("iam_versions_images_bucket_only", "s3:GetObject* instead of s3:GetObjectVersion",
     lambda t: _stmt(t, "ReadImageVersions").update(Action="s3:GetObject*")),
    ("iam_versions_images_bucket_only", "s3:*Version* instead of the three version actions",
     _star_version),
    ("iam_versions_images_bucket_only", "no s3:ListBucketVersions",
     lambda t: _stmts(t).remove(_stmt(t, "ListImageVersions"))),
    ("iam_versions_images_bucket_only", "no s3:GetBucketVersioning",
     lambda t: _stmts(t).remove(_stmt(t, "SeeImagesBucketVersioning"))),
    ("iam_versions_images_bucket_only", "no s3:GetObjectVersion",
     lambda t: _stmts(t).remove(_stmt(t, "ReadImageVersions"))),
    ("iam_versions_images_bucket_only", "the cron job without --versions",
     _ud_replace_after('"$BIN" cron-entry', '--restore-archived "$RESTORE_ARCHIVED_DAYS" --versions',
                       '--restore-archived "$RESTORE_ARCHIVED_DAYS"')),
    ("iam_versions_images_bucket_only", "the first backup without --versions",
     _ud_replace_after('"$BIN" --json', '--restore-archived "$RESTORE_ARCHIVED_DAYS" --versions',
                       '--restore-archived "$RESTORE_ARCHIVED_DAYS"')),
    ("iam_versions_images_bucket_only", "BackupNowCommand without --versions",
     lambda t: t["Outputs"]["BackupNowCommand"]["Value"].update({"Fn::Sub": t["Outputs"]["BackupNowCommand"]
                                                                ["Value"]["Fn::Sub"].replace(" --versions", "")})),
    ("backup_linked_into_home", "no link in the home folder",
     _ud_replace('ln -s "$BACKUP_DIR" "$LINK"\n', 'true\n')),
    ("backup_linked_into_home", "a link elsewhere is replaced",
     _ud_replace('ln -s "$BACKUP_DIR" "$LINK"\n', 'ln -sfn "$BACKUP_DIR" "$LINK"\n')),
    ("backup_linked_into_home", "an existing folder is replaced",
     _ud_replace('die "$LINK exists and is not a symlink', 'rm -rf "$LINK"; log "$LINK exists and is not a symlink')),
    ("alerts_topic_encrypted", "topic not encrypted",
     lambda t: t["Resources"]["AlertTopic"]["Properties"].pop("KmsMasterKeyId")),
    ("alerts_topic_encrypted", "topic under the AWS managed key",
     lambda t: t["Resources"]["AlertTopic"]["Properties"].update(KmsMasterKeyId="alias/aws/sns")),
    ("alerts_backup_alarms", "silence alarm: missing data not breaching",
     lambda t: _alarm(t, "SilenceAlarm").update(TreatMissingData="notBreaching")),
    ("alerts_backup_alarms", "silence alarm: a 1-day period",
     lambda t: _silence_m1(t)["MetricStat"].update(Period=86400)),
    ("alerts_backup_alarms", "silence alarm: M < N (1 of SilenceHours datapoints)",
     lambda t: _alarm(t, "SilenceAlarm").update(DatapointsToAlarm=1)),
    ("alerts_backup_alarms", "silence alarm: a fixed 24 periods instead of SilenceHours",
     lambda t: _alarm(t, "SilenceAlarm").update(EvaluationPeriods=24, DatapointsToAlarm=24)),
    ("alerts_backup_alarms", "silence alarm: no FILL (an hour without a run is missing, not 0)",
     lambda t: _silence_expr(t).update(Expression="m1")),
    ("alerts_backup_alarms", "silence alarm: FILL with 1",
     lambda t: _silence_expr(t).update(Expression="FILL(m1, 1)")),
    ("alerts_backup_alarms", "silence alarm: m1 returned too",
     lambda t: _silence_m1(t).update(ReturnData=True)),
    ("alerts_backup_alarms", "silence alarm: the hour's Minimum",
     lambda t: _silence_m1(t)["MetricStat"].update(Stat="Minimum")),
    ("alerts_backup_alarms", "silence alarm: the old single-metric alarm (a day's Maximum, 1 of 1)",
     lambda t: t["Resources"]["SilenceAlarm"].update(Properties=dict(
         {k: v for k, v in _alarm(t, "SilenceAlarm").items()
          if k not in ("Metrics", "EvaluationPeriods", "DatapointsToAlarm")},
         Namespace={"Ref": "MetricsNamespace"}, MetricName="BackupSucceeded",
         Dimensions=[{"Name": "Bucket", "Value": {"Ref": "ImagesBucket"}}], Statistic="Maximum",
         Period=86400, EvaluationPeriods=1))),
    ("alerts_backup_alarms", "silence alarm in a fixed namespace",
     lambda t: _silence_m1(t)["MetricStat"]["Metric"].update(Namespace="S3Backup")),
    ("alerts_backup_alarms", "SilenceHours up to 200 (over CloudWatch's 7 days)",
     lambda t: t["Parameters"]["SilenceHours"].update(MaxValue=200)),
    ("alerts_backup_alarms", "no OK action",
     lambda t: _alarm(t, "FailedRunAlarm").pop("OKActions")),
    ("alerts_backup_alarms", "alarm on another metric",
     lambda t: _alarm(t, "FailedRunAlarm").update(MetricName="Errors")),
    ("alerts_backup_alarms", "failed-run alarm in a fixed namespace",
     lambda t: _alarm(t, "FailedRunAlarm").update(Namespace="S3Backup")),
    ("alerts_backup_alarms", "no failed-run alarm",
     lambda t: t["Resources"].pop("FailedRunAlarm")),
    ("alerts_snapshot_failures", "no EventBridge rule",
     lambda t: t["Resources"].pop("SnapshotFailureRule")),
    ("alerts_snapshot_failures", "no failed-snapshot pattern",
     lambda t: _event_pattern(t).update({"$or": _event_pattern(t)["$or"][:1]})),
    ("alerts_snapshot_failures", "no DLM ERROR pattern",
     lambda t: _event_pattern(t).update({"$or": _event_pattern(t)["$or"][1:]})),
    ("alerts_snapshot_failures", "failed snapshots of any volume",
     lambda t: _event_pattern(t)["$or"][1]["detail"].pop("source")),
    ("alerts_snapshot_failures", "the rule targets something else",
     lambda t: t["Resources"]["SnapshotFailureRule"]["Properties"]["Targets"][0].update(
         Arn={"Fn::Sub": "arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:other"})),
    ("alerts_snapshot_failures", "the topic policy does not let EventBridge publish",
     lambda t: _topic_stmts(t).remove(next(x for x in _topic_stmts(t)
                                            if x["Principal"].get("Service") == "events.amazonaws.com"))),
    ("alerts_snapshot_failures", "the topic policy lets any EventBridge rule publish",
     lambda t: next(x for x in _topic_stmts(t)
                    if x["Principal"].get("Service") == "events.amazonaws.com").pop("Condition")),
    ("alerts_snapshot_failures", "the topic policy drops the alarms",
     lambda t: _topic_stmts(t).remove(next(x for x in _topic_stmts(t)
                                            if x["Principal"].get("Service") == "cloudwatch.amazonaws.com"))),
    ("alerts_snapshot_failures", "the key does not let EventBridge use it",
     lambda t: _key_stmts(t).remove(next(x for x in _key_stmts(t)
                                          if x["Principal"].get("Service") == "events.amazonaws.com"))),
    ("alerts_snapshot_failures", "the key's EventBridge statement has an aws:SourceAccount condition",
     lambda t: next(x for x in _key_stmts(t) if x["Principal"].get("Service") == "events.amazonaws.com")
     .update(Condition={"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}})),
    ("alerts_outputs", "no StatusCommand output", lambda t: t["Outputs"].pop("StatusCommand")),
    ("alerts_outputs", "backup-now command without the metrics namespace",
     lambda t: t["Outputs"]["BackupNowCommand"]["Value"].update({"Fn::Sub": t["Outputs"]["BackupNowCommand"]
                                                                ["Value"]["Fn::Sub"].replace(" --cloudwatch-namespace ${MetricsNamespace}", "")})),
    ("alerts_outputs", "no alarm name outputs", lambda t: t["Outputs"].pop("SilenceAlarmName")),
    ("iam_role_inline_policy_exact", "signal any stack",
     lambda t: _stmt(t, "SignalThisStack").update(Resource={
         "Fn::Sub": "arn:${AWS::Partition}:cloudformation:${AWS::Region}:${AWS::AccountId}:stack/*"})),
    ("iam_no_other_policies", "an extra AWS::IAM::Policy",
     lambda t: t["Resources"].update(Extra={
         "Type": "AWS::IAM::Policy",
         "Properties": {"PolicyName": "x", "Roles": [{"Ref": "InstanceRole"}], "PolicyDocument": {
             "Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}]}}})),
    ("arns_use_partition", "literal arn:aws: managed policy",
     lambda t: t["Resources"]["InstanceRole"]["Properties"].update(
         ManagedPolicyArns=["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"])),
    ("arns_use_partition", "literal arn:aws: in the bucket policy",
     lambda t: t["Resources"]["ImagesBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
     .update(Resource=[{"Fn::Sub": "arn:aws:s3:::${ImagesBucket}"},
                       {"Fn::Sub": "arn:aws:s3:::${ImagesBucket}/*"}])),
    ("arns_use_partition", "literal arn:aws: in the role policy",
     lambda t: _stmt(t, "ReadTheOneArtifact").update(Resource="arn:aws:s3:::bucket/key")),
    ("parameters_typed_and_grouped", "no parameter groups",
     lambda t: t["Metadata"].pop("AWS::CloudFormation::Interface")),
    ("parameters_typed_and_grouped", "free-form BackupDir",
     lambda t: t["Parameters"]["BackupDir"].pop("AllowedPattern")),
    ("parameters_typed_and_grouped", "undescribed parameter",
     lambda t: t["Parameters"]["Schedule"].pop("Description")),
    ("parameters_bounded", "BackupDir without MaxLength",
     lambda t: t["Parameters"]["BackupDir"].pop("MaxLength")),
    ("parameters_bounded", "ArtifactKey up to 1024",
     lambda t: t["Parameters"]["ArtifactKey"].update(MaxLength=1024)),
    ("parameters_bounded", "the old Schedule pattern (any five words)",
     lambda t: t["Parameters"]["Schedule"].update(AllowedPattern="^[0-9A-Za-z*/,-]+( [0-9A-Za-z*/,-]+){4}$")),
    ("parameters_bounded", "Schedule minutes up to 99",
     lambda t: t["Parameters"]["Schedule"].update(AllowedPattern=t["Parameters"]["Schedule"]["AllowedPattern"]
                                                  .replace("[0-5]?[0-9]", "[0-9]?[0-9]"))),
    ("parameters_bounded", "Schedule weekday names in any case",
     lambda t: t["Parameters"]["Schedule"].update(AllowedPattern=t["Parameters"]["Schedule"]["AllowedPattern"]
                                                  .replace("|sun|", "|[A-Za-z]{3}|"))),
    ("artifact_pinned_by_sha256", "any string as SHA-256",
     lambda t: t["Parameters"]["ArtifactSha256"].update(AllowedPattern=".+")),
    ("outputs_for_the_operator", "no SSM command output",
     lambda t: t["Outputs"].pop("SsmStartSessionCommand")),
    ("outputs_for_the_operator", "SSM command without region",
     lambda t: t["Outputs"]["SsmStartSessionCommand"].update(
         Value={"Fn::Sub": t["Outputs"]["SsmStartSessionCommand"]["Value"]["Fn::Sub"].replace(
             "start-session --region ${AWS::Region} ", "start-session ")})),
    ("outputs_for_the_operator", "no snapshots command",
     lambda t: t["Outputs"].pop("SnapshotsCommand")),
    ("userdata_bootstrap_shape", "no checksum check", _ud_replace("sha256sum -c", "true")),
    ("userdata_bootstrap_shape", "no cfn-signal", _ud_replace("cfn-signal", "true")),
    ("userdata_bootstrap_shape", "cron line written by hand", _ud_replace(
        '"$BIN" cron-entry', 'echo "17 3 * * * root /usr/local/bin/s3backup" #')),
    ("userdata_bootstrap_shape", "first backup as root", _ud_replace("runuser -u", "env")),
    ("userdata_bootstrap_shape", "write_files defer", _ud_replace(
        "    permissions: '0755'\n", "    permissions: '0755'\n    defer: true\n")),
    ("userdata_bootstrap_shape", "not a cloud-config", _ud_replace("#cloud-config\n", "#!/bin/sh\n")),
    ("userdata_bootstrap_robust", "trap set after the parameters are read", _ud_move(
        "trap finish EXIT\n", "FIRST_BACKUP_TIMEOUT=")),
    ("userdata_bootstrap_robust", "no signal-resource fallback",
     _ud_replace("cloudformation signal-resource", "cloudformation describe-stacks")),
    ("userdata_bootstrap_robust", "runuser not checked", _ud_replace("need runuser ", "true runuser ")),
    ("userdata_bootstrap_robust", "download without a time bound",
     _ud_replace("timeout -k 5 180 aws --cli-connect-timeout 10 --cli-read-timeout 30 s3 cp", "aws s3 cp")),
    ("userdata_bootstrap_robust", "dnf without a time bound",
     _ud_replace("timeout -k 10 600 dnf install", "dnf install")),
    ("userdata_bootstrap_robust", "cron restarted everywhere",
     _ud_replace('if [ "$unit" = cron.service ]; then', 'if true; then')),
    ("userdata_backup_volume", "formats whenever blkid finds nothing",
     _ud_replace('if [ "$brc" -eq 2 ] && [ -z "$sigs" ]; then', 'if [ "$brc" -eq 2 ]; then')),
    ("userdata_backup_volume", "mounted by device name",
     _ud_replace("UUID=$uuid $MNT ext4", "$DEV $MNT ext4")),
    ("userdata_backup_volume", "mounted without nofail",
     _ud_replace("defaults,nofail,", "defaults,")),
    ("userdata_backup_volume", "mount trusted without checking what is mounted (nofail)",
     _ud_replace('[ "$(readlink -f "$src")" = "$DEV" ] || die', '[ "$(readlink -f "$src")" = "$DEV" ] || log')),
    ("userdata_backup_volume", "no findmnt after mount",
     _ud_replace('src=$(findmnt -n -o SOURCE --mountpoint "$MNT") || die', 'src=$DEV || die')),
    ("userdata_backup_volume", "a failed chattr +i only logged",
     _ud_replace('chattr +i "$MNT" || die', 'chattr +i "$MNT" || log')),
    ("userdata_backup_volume", "state on the root volume",
     _ud_replace('--state-dir "$STATE_DIR"', '--state-dir /var/lib/s3backup')),
]


def mutants(template_path, outdir):
    os.makedirs(outdir, exist_ok=True)
    base = load_template(template_path)
    # What the rules read: the guard view (the embedded bootstrap decoded in place).
    ud = base["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    ud["Fn::Base64"]["Fn::Sub"] = decoded_userdata(ud["Fn::Base64"]["Fn::Sub"])
    with open(os.path.join(outdir, "00-unmutated.json"), "w", encoding="utf-8") as f:
        json.dump(base, f, indent=1)
    for i, (rule, what, fn) in enumerate(MUTANTS, 1):
        t = copy.deepcopy(base)
        fn(t)
        name = f"{i:02d}-{rule}.json"
        with open(os.path.join(outdir, name), "w", encoding="utf-8") as f:
            json.dump(t, f, indent=1)
        print(f"{name}\t{rule}\t{what}")


def write_mbr(path):
    mbr = bytearray(512)
    mbr[446:462] = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 131072)
    mbr[510:512] = b"\x55\xaa"
    with open(path, "r+b") as f:
        f.write(mbr)


def template_value(template_path, dotted):
    v = load_template(template_path)
    for part in dotted.split("."):
        v = v[part]
    print(v)


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "render-userdata":
        sys.stdout.write(render_userdata(args[0], args[1:]))
    elif cmd == "check-cloud-config":
        check_cloud_config(args[0])
    elif cmd == "write-files":
        write_files(args[0])
    elif cmd == "extract-file":
        extract_file(args[0], args[1])
    elif cmd == "embed-bootstrap":
        embed_bootstrap(args[0], args[1])
    elif cmd == "check-bootstrap":
        check_bootstrap(args[0], args[1])
    elif cmd == "guard-view":
        guard_view(args[0], args[1])
    elif cmd == "userdata-worst-case":
        userdata_worst_case(args[0])
    elif cmd == "runcmd":
        runcmd_script(args[0])
    elif cmd == "check-crond":
        check_crond(args[0], args[1])
    elif cmd == "mutants":
        mutants(args[0], args[1])
    elif cmd == "check-schedule-pattern":
        check_schedule_pattern(args[0])
    elif cmd == "template-value":
        template_value(args[0], args[1])
    elif cmd == "write-mbr":
        write_mbr(args[0])
    else:
        raise SystemExit(f"unknown subcommand {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv)
