#!/usr/bin/env python3
"""Evaluate gpt-oss-nano through a running gpt-oss-server, on the held-out split.

    eval.py --url http://127.0.0.1:8000 [--raw-url http://127.0.0.1:8001] [--heldout FILE]

--url is a server in its normal mode (harmony parsed into content / reasoning /
tool_calls); --raw-url, optional, is a server started with --raw-output on the
same model, whose content is the model's harmony text. Every request is greedy
(temperature 0). Checks, per held-out item:

- raw (strict harmony): the completion is exactly an analysis message then
  either a final message ended by <|return|> or a commentary tool call
  `to=functions.NAME <|constrain|>json` ended by <|call|>; nothing else, no
  fallback of any kind;
- parsed: content equals the expected final answer, the reasoning is returned
  apart from it, or the tool call has the expected name, and arguments that
  are valid JSON matching the tool's parameter schema.

The long-context split (heldout_long.jsonl: the held-out items after long texts, kinds
"KIND@TOKENS") is evaluated the same way (`--heldout runtimes/nano/heldout_long.jsonl`), with
the raw figures also given per length.

Prints the figures as JSON; exits 1 when a threshold is missed (final answers
>= 90% exact, 100% well-formed harmony, 100% valid tool-call arguments).
Standard library only.
"""
import argparse
import concurrent.futures
import json
import os
import re
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

THRESHOLD_EXACT = 0.90

RAW_FINAL = re.compile(
    r"^<\|channel\|>analysis<\|message\|>(?P<analysis>[^<]+)<\|end\|>"
    r"<\|start\|>assistant<\|channel\|>final<\|message\|>(?P<final>[^<]+)(<\|return\|>)?$",
    re.S,
)
RAW_CALL = re.compile(
    r"^<\|channel\|>analysis<\|message\|>(?P<analysis>[^<]+)<\|end\|>"
    r"<\|start\|>assistant<\|channel\|>commentary to=functions\.(?P<name>[A-Za-z0-9_]+) "
    r"<\|constrain\|>json<\|message\|>(?P<args>[^<]+)(<\|call\|>)?$",
    re.S,
)


def post(url, body, timeout=300):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def schema_errors(schema, value, path="arguments"):
    """Errors of `value` against the JSON-schema subset tool parameters use here."""
    t = schema.get("type")
    errs = []
    if t == "object":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        props = schema.get("properties", {})
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}.{k}: required")
        for k, v in value.items():
            if k not in props:
                errs.append(f"{path}.{k}: not in the schema")
            else:
                errs += schema_errors(props[k], v, f"{path}.{k}")
    elif t == "string" and not isinstance(value, str):
        errs.append(f"{path}: not a string")
    elif t == "integer" and not (isinstance(value, int) and not isinstance(value, bool)):
        errs.append(f"{path}: not an integer")
    elif t == "number" and not (isinstance(value, (int, float)) and not isinstance(value, bool)):
        errs.append(f"{path}: not a number")
    elif t == "boolean" and not isinstance(value, bool):
        errs.append(f"{path}: not a boolean")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not one of {schema['enum']}")
    return errs


def tool_schema(request, name):
    for t in request.get("tools") or []:
        if t["function"]["name"] == name:
            return t["function"].get("parameters") or {"type": "object"}
    return None


def check_arguments(request, name, args_text):
    """(valid JSON matching the schema, parsed arguments or None, errors)."""
    schema = tool_schema(request, name)
    if schema is None:
        return False, None, [f"no tool named {name!r} in the request"]
    try:
        args = json.loads(args_text)
    except ValueError as e:
        return False, None, [f"arguments are not JSON: {e}"]
    errs = schema_errors(schema, args)
    return not errs, args, errs


def body_for(item, max_tokens):
    return dict(item["request"], temperature=0, max_tokens=max_tokens)


def eval_raw(url, item, max_tokens):
    r = post(url, body_for(item, max_tokens))
    choice = r["choices"][0]
    text = choice["message"].get("content") or ""
    out = {"raw": text, "finish_reason": choice.get("finish_reason")}
    want = item["expect"]
    m = RAW_FINAL.match(text) if "final" in want else RAW_CALL.match(text)
    # the stop token itself (<|return|>, <|call|>) ends generation; the finish reason says which
    fin = choice.get("finish_reason")
    out["well_formed"] = bool((RAW_FINAL.match(text) and fin == "stop")
                              or (RAW_CALL.match(text) and fin == "tool_calls"))
    if "final" in want:
        out["exact"] = bool(m) and m.group("final") == want["final"]
    else:
        ok = bool(m) and m.group("name") == want["tool_call"]["name"]
        valid, args, _ = check_arguments(item["request"], m.group("name"), m.group("args")) if m else (False, None, [])
        out["args_valid"] = valid
        out["exact"] = ok and valid and args == want["tool_call"]["arguments"]
    return out


def eval_parsed(url, item, max_tokens):
    r = post(url, body_for(item, max_tokens))
    choice = r["choices"][0]
    msg = choice["message"]
    reasoning = msg.get("reasoning_content") or msg.get("reasoning") or (msg.get("thinking") or {}).get("analysis")
    # separated: the analysis comes back in its own field and no harmony markup is left in content
    out = {"content": msg.get("content"), "finish_reason": choice.get("finish_reason"),
           "reasoning_separated": bool(reasoning) and "<|" not in (msg.get("content") or "")}
    want = item["expect"]
    calls = msg.get("tool_calls") or []
    if "final" in want:
        out["exact"] = msg.get("content") == want["final"] and not calls
    else:
        out["exact"] = False
        out["args_valid"] = False
        if calls:
            fn = calls[0]["function"]
            valid, args, errs = check_arguments(item["request"], fn["name"], fn["arguments"])
            out["args_valid"] = valid
            out["args_errors"] = errs
            out["exact"] = (fn["name"] == want["tool_call"]["name"] and valid
                            and args == want["tool_call"]["arguments"] and choice.get("finish_reason") == "tool_calls")
        out["tool_calls"] = calls
    return out


def run(fn, url, items, max_tokens, workers):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda it: fn(url, it, max_tokens), items))


def ratio(n, d):
    return round(n / d, 4) if d else None


def evaluate(url, raw_url, all_items, max_tokens=256, workers=2, parsed_limit=None):
    """Runs the evaluation; returns (figures, failures). The raw (strict) pass covers every
    item; the parsed pass the first `parsed_limit` items (all by default)."""
    figures, failures = {"items": len(all_items)}, []
    items = all_items[:parsed_limit] if parsed_limit else all_items
    figures["parsed_items"] = len(items)
    finals = [i for i, it in enumerate(items) if "final" in it["expect"]]
    calls = [i for i, it in enumerate(items) if "tool_call" in it["expect"]]
    parsed = run(eval_parsed, url, items, max_tokens, workers)
    figures["parsed"] = {
        "final_exact": ratio(sum(parsed[i]["exact"] for i in finals), len(finals)),
        "reasoning_separated": ratio(sum(p["reasoning_separated"] for p in parsed), len(parsed)),
        "tool_call_exact": ratio(sum(parsed[i]["exact"] for i in calls), len(calls)),
        "tool_args_valid": ratio(sum(parsed[i]["args_valid"] for i in calls), len(calls)),
    }
    by_kind = {}
    for it, p in zip(items, parsed):
        k = by_kind.setdefault(it["kind"], [0, 0])
        k[0] += p["exact"]
        k[1] += 1
    figures["parsed"]["exact_by_kind"] = {k: f"{a}/{b}" for k, (a, b) in sorted(by_kind.items())}
    for it, p in zip(items, parsed):
        if not (p["exact"] and p["reasoning_separated"]):
            failures.append({"id": it["id"], "mode": "parsed", "expect": it["expect"], "got": p})
    if raw_url:
        items = all_items
        finals = [i for i, it in enumerate(items) if "final" in it["expect"]]
        calls = [i for i, it in enumerate(items) if "tool_call" in it["expect"]]
        raw = run(eval_raw, raw_url, items, max_tokens, workers)
        figures["raw"] = {
            "well_formed": ratio(sum(r["well_formed"] for r in raw), len(raw)),
            "final_exact": ratio(sum(raw[i]["exact"] for i in finals), len(finals)),
            "tool_call_exact": ratio(sum(raw[i]["exact"] for i in calls), len(calls)),
            "tool_args_valid": ratio(sum(raw[i]["args_valid"] for i in calls), len(calls)),
        }
        # long-context items (gen_corpus.py --long-heldout) are kinds "KIND@TOKENS"
        by_length = {}
        for it, r in zip(items, raw):
            if "@" in it["kind"]:
                n = by_length.setdefault(int(it["kind"].split("@")[1]), [0, 0, 0])
                n[0] += r["well_formed"]
                n[1] += r["exact"]
                n[2] += 1
        if by_length:
            figures["raw"]["by_length"] = {str(k): {"well_formed": f"{w}/{t}", "exact": f"{e}/{t}"}
                                           for k, (w, e, t) in sorted(by_length.items())}
        for it, r in zip(items, raw):
            if not (r["well_formed"] and r["exact"]):
                failures.append({"id": it["id"], "mode": "raw", "expect": it["expect"], "got": r})
    return figures, failures


def passed(figures):
    p = figures["parsed"]
    ok = (p["final_exact"] or 0) >= THRESHOLD_EXACT and p["tool_args_valid"] in (None, 1.0)
    if "raw" in figures:
        r = figures["raw"]
        ok = ok and r["well_formed"] == 1.0 and (r["final_exact"] or 0) >= THRESHOLD_EXACT \
            and r["tool_args_valid"] in (None, 1.0)
    return ok


def load(path, limit=None):
    with open(path) as f:
        items = [json.loads(line) for line in f if line.strip()]
    return items[:limit] if limit else items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--raw-url")
    ap.add_argument("--heldout", default=os.path.join(HERE, "heldout.jsonl"))
    ap.add_argument("--limit", type=int)
    ap.add_argument("--parsed-limit", type=int, help="parsed-mode pass on the first N items only")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--show-failures", type=int, default=10)
    args = ap.parse_args()
    items = load(args.heldout, args.limit)
    figures, failures = evaluate(args.url.rstrip("/"), args.raw_url and args.raw_url.rstrip("/"), items,
                                 workers=args.workers, parsed_limit=args.parsed_limit)
    for f in failures[: args.show_failures]:
        print(json.dumps(f), file=sys.stderr)
    print(json.dumps(figures, indent=1))
    sys.exit(0 if passed(figures) else 1)


if __name__ == "__main__":
    main()
