"""Structural check of docker/docker-compose.yml (run by `make compose-check`); also the bind
address of the service and the modes of the workspace files the container's user must read."""
import importlib.metadata as md, io, ipaddress, json, os, re, stat, sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
try:
    import yaml
except ImportError:
    sys.exit("compose-check: PyYAML is missing from .venv (transformers and huggingface_hub "
             "normally bring it): .venv/bin/pip install pyyaml")
from pydantic import BaseModel
from plugin.cli import main as udrl
from plugin.config import Settings

FILE = Path("docker/docker-compose.yml")
errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)
    return ok
def envlines(path):  # KEY=VALUE lines of an env file
    return [l.strip() for l in path.read_text().splitlines() if "=" in l and not l.lstrip().startswith("#")]
def as_dict(env):  # environment: a mapping or ["KEY=value", ...]
    if isinstance(env, list):
        return dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in (env or {}).items()}

# interpolation as compose does it: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}
dotenv = FILE.parent / ".env"
ENV = {**(as_dict(envlines(dotenv)) if dotenv.is_file() else {}), **os.environ}
def sub(m):
    if m.group(0) == "$$":
        return "$"
    name, op, arg = m.group(1) or m.group(4), m.group(2) or "", m.group(3)
    val = ENV.get(name)
    unset = val is None or (op.startswith(":") and not val)
    if op.endswith("?") and unset:
        errors.append(f"${{{name}}} is required: {arg}")
    return arg if op.endswith("-") and unset else (val or "")
def interp(x):
    if isinstance(x, str):
        return re.sub(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)", sub, x)
    if isinstance(x, dict):
        return {k: interp(v) for k, v in x.items()}
    return [interp(v) for v in x] if isinstance(x, list) else x

def parses(cmd, where):  # a `udrl ...` command line: every subcommand and flag must exist
    if cmd and cmd[0] == "udrl":
        out = io.StringIO()
        with redirect_stdout(out), redirect_stderr(out):
            rc = udrl([*cmd[1:], "--help"])
        check(rc == 0, f"{where}: `{' '.join(cmd)}` does not parse: {out.getvalue().strip()[-300:]}")

def is_setting(name):  # UDRL_INDEX__ES_URL -> Settings.index.es_url
    model = Settings
    for i, part in enumerate(name[len("UDRL_"):].lower().split("__")):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return False
        model = model.model_fields[part].annotation
    return True

try:
    doc = interp(yaml.safe_load(FILE.read_text()))
except (OSError, yaml.YAMLError) as e:
    sys.exit(f"compose-check: {FILE} does not parse: {e}")
services = doc.get("services") or {}
for name in ("elasticsearch", "udrl"):
    check(name in services, f"no service {name!r} (services: {sorted(services)})")
declared = set(doc.get("volumes") or {})
for name, svc in services.items():
    check("image" in svc or "build" in svc, f"service {name}: needs an image or a build")
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
        if src and not src.startswith((".", "/", "~")):
            check(src in declared, f"service {name}: volume {src!r} is not declared under volumes")
    for dep in svc.get("depends_on") or []:
        check(dep in services, f"service {name}: depends on unknown service {dep!r}")

# Elasticsearch: single node, security off, bounded heap, health-checked, a version the client speaks
es = services.get("elasticsearch", {})
esenv = as_dict(es.get("environment"))
check(esenv.get("discovery.type") == "single-node", "elasticsearch: discovery.type must be single-node")
check(esenv.get("xpack.security.enabled") == "false", "elasticsearch: xpack.security.enabled must be \"false\"")
opts = esenv.get("ES_JAVA_OPTS", "")
check("-Xms" in opts and "-Xmx" in opts, f"elasticsearch: ES_JAVA_OPTS needs -Xms and -Xmx (got {opts!r})")
check("_cluster/health" in str((es.get("healthcheck") or {}).get("test", "")),
      "elasticsearch: the healthcheck must query _cluster/health")
tag = re.search(r"elasticsearch:(\d+)\.\d+\.\d+$", es.get("image", ""))
if check(tag, f"elasticsearch: image {es.get('image')!r} needs an x.y.z version tag"):
    server = int(tag.group(1))
    extra = str(((services.get("udrl", {}).get("build") or {}).get("args") or {}).get("EXTRA_PIP", ""))
    pin = re.search(r"elasticsearch\S*<\s*(\d+)", extra)
    client = int(pin.group(1)) - 1 if pin else int(md.version("elasticsearch").split(".")[0])
    check(server >= client, f"elasticsearch: server {server}.x refuses the {client}.x Python client "
          f"(it sends compatible-with={client}); set ES_VERSION to a {client}.x release or build "
          f"udrl with EXTRA_PIP=\"elasticsearch<{server + 1}\"")

# profile es-cluster: each Elasticsearch node names itself, seeds from the others and bootstraps
# from all of them (one cluster.name, the single node's image); its udrl services wait for every
# node to be healthy and talk to one of them
nodes = {n: s for n, s in services.items()
         if "es-cluster" in (s.get("profiles") or []) and "/elasticsearch:" in s.get("image", "")}
check(not nodes or len(nodes) >= 2, f"es-cluster: needs two or more Elasticsearch nodes, has {sorted(nodes)}")
for n, s in nodes.items():
    e = as_dict(s.get("environment"))
    check(e.get("node.name") == n, f"es-cluster: {n}: node.name must be {n!r}")
    check(e.get("discovery.type") != "single-node", f"es-cluster: {n}: a single-node node joins no cluster")
    check(e.get("cluster.name") == as_dict(next(iter(nodes.values())).get("environment")).get("cluster.name"),
          f"es-cluster: {n}: every node needs the same cluster.name")
    check(set(e.get("cluster.initial_master_nodes", "").split(",")) == set(nodes),
          f"es-cluster: {n}: cluster.initial_master_nodes must list {','.join(nodes)}")
    check(set(e.get("discovery.seed_hosts", "").split(",")) >= set(nodes) - {n},
          f"es-cluster: {n}: discovery.seed_hosts must name {','.join(sorted(set(nodes) - {n}))}")
    check("-Xms" in e.get("ES_JAVA_OPTS", "") and "-Xmx" in e.get("ES_JAVA_OPTS", ""), f"es-cluster: {n}: ES_JAVA_OPTS needs -Xms and -Xmx")
    check("_cluster/health" in str((s.get("healthcheck") or {}).get("test", "")), f"es-cluster: {n}: the healthcheck must query _cluster/health")
    check(s.get("image") == es.get("image"), f"es-cluster: {n}: image {s.get('image')!r} is not elasticsearch's {es.get('image')!r}")
for n, s in services.items():
    url = as_dict(s.get("environment")).get("UDRL_INDEX__ES_URL", "")
    if nodes and "es-cluster" in (s.get("profiles") or []) and url:
        check(re.sub(r"^\w+://([^:/]+).*$", r"\1", url) in nodes, f"es-cluster: {n}: UDRL_INDEX__ES_URL {url} is no node of {sorted(nodes)}")
        deps = s.get("depends_on") or {}
        check(all((deps.get(x) or {}).get("condition") == "service_healthy" for x in nodes),
              f"es-cluster: {n}: depends_on needs every node ({', '.join(nodes)}) with condition: service_healthy")

# udrl: built from the repository root, waits for a healthy Elasticsearch, serves 8080 from /data
u = services.get("udrl", {})
b = u.get("build") or {}
b = {"context": b} if isinstance(b, str) else b
ctx = (FILE.parent / b.get("context", ".")).resolve()
check((ctx / "pyproject.toml").is_file(), f"udrl: build context {ctx} is not the repository root")
dockerfile = ctx / b.get("dockerfile", "Dockerfile")
if check(dockerfile.is_file(), f"udrl: dockerfile {dockerfile} does not exist"):
    text = dockerfile.read_text().replace("\\\n", " ")  # join continued lines
    for pat, what in ((r"(?m)^EXPOSE\s+8080\b", "EXPOSE 8080"),
                      (r"(?m)^HEALTHCHECK\b.*/healthz", "a HEALTHCHECK on /healthz"),
                      (r"(?m)^USER\s+(?!root\b|0\b)\S+", "a non-root USER")):
        check(re.search(pat, text), f"{dockerfile.name}: needs {what}")
    cmd = re.search(r"(?m)^CMD\s+(\[.*\])\s*$", text)
    if check(cmd, f"{dockerfile.name}: needs an exec-form CMD [\"udrl\", \"serve\", ...]"):
        parses(json.loads(cmd.group(1)), f"{dockerfile.name} CMD")
check(((u.get("depends_on") or {}).get("elasticsearch") or {}).get("condition") == "service_healthy",
      "udrl: depends_on elasticsearch needs condition: service_healthy")
check(any(str(p).split(":")[-1].split("/")[0] == "8080" for p in u.get("ports", [])),
      "udrl: must publish container port 8080")
check(any((v.split(":")[1] if isinstance(v, str) else v.get("target")) == "/data"
          for v in u.get("volumes", [])), "udrl: needs the workspace volume at /data")

# UDRL_* variables must name real settings (pydantic-settings silently ignores unknown ones) and
# hold valid values; `udrl ...` commands must parse
envfile = FILE.parent / "udrl.env"
for name, svc in services.items():
    env = as_dict(svc.get("environment"))
    if svc.get("env_file") and envfile.is_file():
        env.update(as_dict(envlines(envfile)))
    env = {k: v for k, v in env.items() if k.startswith("UDRL_") and k != "UDRL_CONFIG"}
    bad = [k for k in env if not is_setting(k)]
    check(not bad, f"service {name}: {', '.join(bad)}: no such setting in plugin.config.Settings")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("UDRL_")}
    os.environ.update({k: v for k, v in env.items() if k not in bad})
    try:
        Settings()
    except Exception as e:
        errors.append(f"service {name}: invalid settings: {' '.join(str(e).split())[:300]}")
    cmd = svc.get("command")
    parses(cmd.split() if isinstance(cmd, str) else cmd, f"service {name}")
    for k in [k for k in os.environ if k.startswith("UDRL_")]:
        del os.environ[k]
    os.environ.update(saved)

# udrl: published on this host's loopback unless the API has a key (without one, anyone who
# reaches the port can use it)
def host_ip(port):  # "IP:HOST:CONTAINER", "HOST:CONTAINER", "CONTAINER" or the long syntax
    if isinstance(port, dict):
        return port.get("host_ip") or "0.0.0.0"
    m = re.match(r"^\[?([0-9a-fA-F.:]+?)\]?:[^:\]]+:[^:\]]+$", str(port))
    return m.group(1) if m else "0.0.0.0"
def loopback(ip):
    try:
        return ip == "localhost" or ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False
uenv = as_dict(u.get("environment"))
if u.get("env_file") and envfile.is_file():
    uenv.update(as_dict(envlines(envfile)))
binds = [host_ip(p) for name, svc in services.items() if svc.get("image") == u.get("image")
         for p in svc.get("ports", [])]  # udrl and every service of its image
for ip in binds:
    check(loopback(ip) or uenv.get("UDRL_SERVICE__API_KEY"),
          f"udrl: port published on {ip} (beyond this host's loopback) with no API key; set "
          f"UDRL_BIND=127.0.0.1, or UDRL_SERVICE__API_KEY in {envfile}")

# the workspace the container reads (UDRL_WORKSPACE_DIR when it is a host folder, else the
# folder `make demo` writes and docker/README.md copies into the volume): every file and
# folder readable by the container's user
def readable(st, uid, gid, need):  # need: 4 (read) or 5 (read + enter)
    if uid == 0:
        return True
    shift = 6 if st.st_uid == uid else 3 if st.st_gid == gid else 0
    return (st.st_mode >> shift) & need == need
uid, gid = int(ENV.get("UDRL_UID") or 10001), int(ENV.get("UDRL_GID") or 10001)
wsdir = ENV.get("UDRL_WORKSPACE_DIR") or ""
ws = ((FILE.parent / wsdir).expanduser().resolve() if wsdir.startswith((".", "/", "~"))
      else Path(os.environ.get("DEMO_WS") or "demo-workspace"))
checked, bad = 0, []
if ws.is_dir():
    for base, dirs, files in os.walk(ws):
        for name, need in [(d, 5) for d in dirs] + [(f, 4) for f in files] + [("", 5)] * (base == str(ws)):
            path = Path(base, name)
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                continue
            checked += 1
            if not readable(st, uid, gid, need):
                bad.append(f"{path.relative_to(ws).as_posix() or '.'} ({stat.filemode(st.st_mode)})")
    check(not bad, f"{ws}: {len(bad)} of {checked} files or folders are not readable by uid "
          f"{uid} (the container's user), e.g. {', '.join(bad[:5])}; fix with: chmod -R a+rX {ws}")

if errors:
    sys.exit("\n".join(f"compose-check: {FILE}: {e}" for e in errors))
print(f"compose-check: {FILE} OK: services {', '.join(services)}; UDRL_* settings, udrl commands "
      f"and Elasticsearch {tag.group(1)}.x vs Python client {md.version('elasticsearch')} checked; "
      f"udrl published on {', '.join(binds) or 'no port'}"
      + (f"; {checked} files and folders of {ws} readable by uid {uid}" if ws.is_dir() else
         f"; no workspace at {ws} to check"))
