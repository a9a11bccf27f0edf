"""`onvm nf check TYPE --config CONFIG [--json]`: build an NF's config as an
agent would and say whether it runs, as `suricata -T` does for a ruleset.

    onvm nf check ids --config web.rules --json
    {"nf": "ids", "ok": true, "loaded": 412, "skipped": [{"line": 7, "sid": 2012, "keyword": "flowbits", "why": "..."}]}

CONFIG is a JSON object, or a file as a catalog names one (a rule file for
firewall and ids, YAML/JSON for the others: nfs.configs.instance_config).
For ids, the rules Hyperscan cannot compile are found here too (no DPDK is
started).  Exit 0 when the NF would run, 1 when it cannot.

Not here: the config parsers themselves (nfs/configs.py, nfs/idsrules.py).
"""
import json
import sys

from nflib.api import NFConfigError
from nfs.configs import NotCheckable, check_config, instance_config


def parse_config_arg(text):
    """The --config argument: a JSON object, or a file path."""
    if text is None:
        return {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            return json.loads(stripped)
        except ValueError as err:
            raise NFConfigError(f"--config: not a JSON object: {err}") from None
    return instance_config(text)


def check(nf_type, config):
    """{"nf", "ok", ...}: for ids also "loaded" and "skipped"; "error" when
    the config cannot run."""
    try:
        parsed = check_config(nf_type, config)
        out = {"nf": nf_type, "ok": True}
        if nf_type == "ids":
            from nfs.ids import runnable
            _, rules, source = parsed
            rules = runnable(rules, source)
            out.update(loaded=len(rules), skipped=[
                {"line": sk.line, "sid": sk.sid, "keyword": sk.keyword, "why": sk.message}
                for sk in rules.skipped])
        return out
    except (NFConfigError, NotCheckable) as err:
        return {"nf": nf_type, "ok": False, "error": str(err)}


def cli_nf_check(args):
    try:
        result = check(args.type, parse_config_arg(args.config))
    except NFConfigError as err:
        result = {"nf": args.type, "ok": False, "error": str(err)}
    if args.json:
        print(json.dumps(result))
    elif result["ok"]:
        extra = ""
        if "loaded" in result:
            extra = f": {result['loaded']} rules loaded, {len(result['skipped'])} skipped"
            for sk in result["skipped"]:
                print(f"  skipped line {sk['line']} sid {sk['sid'] or '?'}: {sk['keyword']}: "
                      f"{sk['why']}", file=sys.stderr)
        print(f"{args.type}: config runs{extra}")
    else:
        print(f"{args.type}: config cannot run:\n{result['error']}", file=sys.stderr)
    return 0 if result["ok"] else 1
