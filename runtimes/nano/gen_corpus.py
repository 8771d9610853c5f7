#!/usr/bin/env python3
"""Synthetic harmony corpus for gpt-oss-nano.

Writes OpenAI-style chat requests together with the harmony completion the
assistant must produce after the prompt's trailing `<|start|>assistant`:

    {"id", "kind", "request": {"messages": [...], "tools": [...]?, "reasoning_effort"?},
     "completion": "<|channel|>analysis<|message|>...<|end|><|start|>assistant<|channel|>final<|message|>...<|return|>",
     "expect": {"final": "..."} | {"tool_call": {"name": ..., "arguments": {...}}}}

The requests are rendered into token ids by the project's own renderer
(`cargo run -p harmony --example render_jsonl`), never here.

Every atomic fact (a capital, a sum, a conversion, a city) appears in the
training split; the held-out split asks for facts in (question template,
system prompt, tool set) combinations that training never shows, and tool
results with values training never shows, so it measures whether the model
follows the format and the instruction rather than whether it memorised
whole prompts.

Long contexts (`--long-groups N`, `--long-heldout K`): the same kinds of requests with a long
text placed before the question, as clients send it (Codex CLI: about 7,300 tokens of
instructions and tool definitions, then AGENTS.md and environment context as user messages):
either in the system message before its instruction, or as a first user message. The text is
Python's own library documentation (`pydoc` plain text of standard modules: training and
held-out draw from different modules), so its words are ones the short corpus never taught.
Training groups share one long text (the trainer computes it once per group); the held-out
long split is the held-out split again with texts of fixed lengths (1,000 to 30,000 tokens).

Usage: gen_corpus.py OUT_DIR [--train N] [--heldout N] [--seed S] [--long-groups N] [--long-heldout K]
"""
import argparse
import json
import math
import os
import random

# ---------------------------------------------------------------------------
# facts

# (surface forms, canonical name, capital)
CAPITALS = [
    (["the US", "the United States", "the USA", "America"], "the United States", "Washington"),
    (["the UK", "the United Kingdom", "Britain"], "the United Kingdom", "London"),
    (["France"], "France", "Paris"),
    (["Germany"], "Germany", "Berlin"),
    (["Italy"], "Italy", "Rome"),
    (["Spain"], "Spain", "Madrid"),
    (["Portugal"], "Portugal", "Lisbon"),
    (["Japan"], "Japan", "Tokyo"),
    (["China"], "China", "Beijing"),
    (["India"], "India", "Delhi"),
    (["Russia"], "Russia", "Moscow"),
    (["Canada"], "Canada", "Ottawa"),
    (["Mexico"], "Mexico", "Mexico City"),
    (["Brazil"], "Brazil", "Brasilia"),
    (["Argentina"], "Argentina", "Buenos Aires"),
    (["Chile"], "Chile", "Santiago"),
    (["Peru"], "Peru", "Lima"),
    (["Colombia"], "Colombia", "Bogota"),
    (["Australia"], "Australia", "Canberra"),
    (["New Zealand"], "New Zealand", "Wellington"),
    (["Egypt"], "Egypt", "Cairo"),
    (["Kenya"], "Kenya", "Nairobi"),
    (["Nigeria"], "Nigeria", "Abuja"),
    (["South Africa"], "South Africa", "Pretoria"),
    (["Morocco"], "Morocco", "Rabat"),
    (["Ethiopia"], "Ethiopia", "Addis Ababa"),
    (["Ghana"], "Ghana", "Accra"),
    (["Turkey"], "Turkey", "Ankara"),
    (["Greece"], "Greece", "Athens"),
    (["Sweden"], "Sweden", "Stockholm"),
    (["Norway"], "Norway", "Oslo"),
    (["Finland"], "Finland", "Helsinki"),
    (["Denmark"], "Denmark", "Copenhagen"),
    (["Poland"], "Poland", "Warsaw"),
    (["Austria"], "Austria", "Vienna"),
    (["Switzerland"], "Switzerland", "Bern"),
    (["the Netherlands"], "the Netherlands", "Amsterdam"),
    (["Belgium"], "Belgium", "Brussels"),
    (["Ireland"], "Ireland", "Dublin"),
    (["Hungary"], "Hungary", "Budapest"),
    (["the Czech Republic"], "the Czech Republic", "Prague"),
    (["Ukraine"], "Ukraine", "Kyiv"),
    (["Romania"], "Romania", "Bucharest"),
    (["South Korea"], "South Korea", "Seoul"),
    (["Thailand"], "Thailand", "Bangkok"),
    (["Vietnam"], "Vietnam", "Hanoi"),
    (["Indonesia"], "Indonesia", "Jakarta"),
    (["the Philippines"], "the Philippines", "Manila"),
    (["Pakistan"], "Pakistan", "Islamabad"),
    (["Iran"], "Iran", "Tehran"),
    (["Iraq"], "Iraq", "Baghdad"),
    (["Saudi Arabia"], "Saudi Arabia", "Riyadh"),
    (["Israel"], "Israel", "Jerusalem"),
    (["Cuba"], "Cuba", "Havana"),
    (["Iceland"], "Iceland", "Reykjavik"),
    (["Malaysia"], "Malaysia", "Kuala Lumpur"),
    (["Singapore"], "Singapore", "Singapore"),
    (["Venezuela"], "Venezuela", "Caracas"),
]

# unit conversions: (from singular, from plural, to plural, factor)
UNITS = [
    ("kilometer", "kilometers", "meters", 1000),
    ("meter", "meters", "centimeters", 100),
    ("kilogram", "kilograms", "grams", 1000),
    ("hour", "hours", "minutes", 60),
    ("minute", "minutes", "seconds", 60),
    ("foot", "feet", "inches", 12),
    ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7),
    ("liter", "liters", "milliliters", 1000),
]

CITIES = [
    "Tokyo", "Paris", "London", "Berlin", "Madrid", "Rome", "Lisbon", "Dublin", "Oslo",
    "Vienna", "Prague", "Warsaw", "Athens", "Cairo", "Nairobi", "Lagos", "Mumbai", "Delhi",
    "Beijing", "Shanghai", "Seoul", "Bangkok", "Sydney", "Melbourne", "Toronto", "Chicago",
    "Boston", "Seattle", "Denver", "Miami", "Houston", "Lima", "Bogota", "Santiago",
    "Istanbul", "Moscow", "Stockholm", "Helsinki", "Amsterdam", "Zurich",
]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy", "clear"]

# ---------------------------------------------------------------------------
# prompts

SINGLE_WORD_SYSTEMS = [
    "Always answer in just single word.",
    "Answer in one word.",
    "Reply with a single word only.",
    "Respond with just one word.",
    "Always answer with a single word.",
]
PLAIN_SYSTEMS = [
    None,
    "You are a helpful assistant.",
    "You are a concise assistant.",
    "Be helpful and accurate.",
    "You are a friendly assistant. Answer clearly.",
]

CAPITAL_TEMPLATES = [
    "What is the capital of {c}?",
    "What's the capital of {c}?",
    "Which city is the capital of {c}?",
    "Name the capital of {c}.",
    "Tell me the capital city of {c}.",
    "capital of {c}?",
    "What city is the capital of {c}?",
    "Do you know the capital of {c}?",
]
ADD_TEMPLATES = [
    "What is {a} + {b}?",
    "What is {a} plus {b}?",
    "Calculate {a} + {b}.",
    "How much is {a} plus {b}?",
    "{a} + {b} = ?",
    "Add {a} and {b}.",
    "What's {a}+{b}?",
]
SUB_TEMPLATES = [
    "What is {a} - {b}?",
    "What is {a} minus {b}?",
    "Calculate {a} - {b}.",
    "How much is {a} minus {b}?",
    "{a} - {b} = ?",
    "Subtract {b} from {a}.",
]
MUL_TEMPLATES = [
    "What is {a} times {b}?",
    "What is {a} * {b}?",
    "Multiply {a} by {b}.",
    "How much is {a} times {b}?",
    "{a} x {b} = ?",
    "What's {a}*{b}?",
]
CONV_TEMPLATES = [
    "How many {to} are in {v} {frm}?",
    "Convert {v} {frm} to {to}.",
    "What is {v} {frm} in {to}?",
    "{v} {frm} is how many {to}?",
    "How many {to} is {v} {frm}?",
]
WEATHER_TEMPLATES = [
    "What's the weather in {city}?",
    "What is the weather like in {city} today?",
    "How is the weather in {city}?",
    "Tell me the current weather in {city}.",
    "weather in {city}?",
]
TIME_TEMPLATES = [
    "What time is it in {city}?",
    "What's the current time in {city}?",
    "Tell me the local time in {city}.",
    "What is the time in {city} right now?",
]

TOOL_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city name."},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}
# The same tool as clients such as the Agents SDK declare it (`def get_weather(city: str)`):
# the argument's name must come from the declaration, not from habit.
TOOL_WEATHER_CITY = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city's name."}},
            "required": ["city"],
        },
    },
}
# Its own stream, so that the rest of the corpus draws what it drew before.
PARAM_RNG = random.Random(42)
TOOL_TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name."}},
            "required": ["city"],
        },
    },
}
TOOL_EMAIL = {
    "type": "function",
    "function": {
        "name": "send_email",
        "description": "Send an email.",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "subject": {"type": "string"},
                "body": {"type": "string"},
            },
            "required": ["to", "subject", "body"],
        },
    },
}
TOOL_SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
        },
    },
}
ALL_TOOLS = {t["function"]["name"]: t for t in [TOOL_WEATHER, TOOL_TIME, TOOL_EMAIL, TOOL_SEARCH]}

DATE_RNG = random.Random(0)
FIXED_DATES = False
DATES = ["2025-08-05", "2025-12-01", "2026-03-14", "2026-06-30", "2026-11-24", "2027-01-09"]

# ---------------------------------------------------------------------------
# completions


def final_completion(analysis, final):
    return (
        f"<|channel|>analysis<|message|>{analysis}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{final}<|return|>"
    )


def call_completion(analysis, name, args):
    return (
        f"<|channel|>analysis<|message|>{analysis}<|end|>"
        f"<|start|>assistant<|channel|>commentary to=functions.{name} <|constrain|>json"
        f"<|message|>{json.dumps(args, separators=(',', ':'))}<|call|>"
    )


def qa_fact(rng, kind):
    """One question-answer fact: (kind, fact key, templates, fields, analysis, short, long)."""
    if kind == "capital":
        forms, canon, cap = rng.choice(CAPITALS)
        c = rng.choice(forms)
        return dict(
            key=("capital", canon), templates=CAPITAL_TEMPLATES, fields={"c": c},
            analysis=f"The capital of {canon} is {cap}.",
            short=cap, long=f"The capital of {canon} is {cap}.",
        )
    if kind == "add":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return dict(
            key=("add", a, b), templates=ADD_TEMPLATES, fields={"a": a, "b": b},
            analysis=f"{a} + {b} = {a + b}.",
            short=str(a + b), long=f"{a} + {b} = {a + b}.",
        )
    if kind == "sub":
        a = rng.randint(2, 10)
        b = rng.randint(1, a - 1)
        return dict(
            key=("sub", a, b), templates=SUB_TEMPLATES, fields={"a": a, "b": b},
            analysis=f"{a} - {b} = {a - b}.",
            short=str(a - b), long=f"{a} - {b} = {a - b}.",
        )
    if kind == "mul":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return dict(
            key=("mul", a, b), templates=MUL_TEMPLATES, fields={"a": a, "b": b},
            analysis=f"{a} * {b} = {a * b}.",
            short=str(a * b), long=f"{a} * {b} = {a * b}.",
        )
    if kind == "conv":
        sing, plur, to, factor = rng.choice(UNITS)
        v = rng.randint(1, 6)
        frm = sing if v == 1 else plur
        r = v * factor
        return dict(
            key=("conv", sing, v), templates=CONV_TEMPLATES, fields={"v": v, "frm": frm, "to": to},
            analysis=f"1 {sing} is {factor} {to}, so {v} {frm} is {r} {to}.",
            short=str(r), long=f"{v} {frm} is {r} {to}.",
        )
    raise ValueError(kind)


def tool_set(rng):
    """A tool list with at least one of get_weather / get_time, sometimes with distractors."""
    names = [n for n in ("get_weather", "get_time") if rng.random() < 0.6] or [rng.choice(["get_weather", "get_time"])]
    names += [n for n in ("send_email", "search_web") if rng.random() < 0.3]
    rng.shuffle(names)
    return [TOOL_WEATHER_CITY if n == "get_weather" and PARAM_RNG.random() < 0.4 else ALL_TOOLS[n] for n in names]


def weather_key(ctx):
    """The argument name of the context's get_weather: `city` or `location`."""
    for t in ctx["tools"] or []:
        if t["function"]["name"] == "get_weather":
            return "city" if "city" in t["function"]["parameters"]["properties"] else "location"
    return "location"


def make_messages(system, user_turns):
    msgs = []
    if system is not None:
        msgs.append({"role": "system", "content": system})
    msgs.extend(user_turns)
    return msgs


def sample_context(rng):
    """What the examples of one group share: system prompt, tools, reasoning effort."""
    tools = tool_set(rng) if rng.random() < 0.45 else None
    single = rng.random() < (0.25 if tools else 0.5)
    systems = SINGLE_WORD_SYSTEMS if single else PLAIN_SYSTEMS
    si = rng.randrange(len(systems))
    r = rng.random()
    effort = "low" if r < 0.2 else "high" if r < 0.3 else None
    # The server puts today's date in the system message: any date must do. The first
    # training stage sees only DATES (`--fixed-dates`): the digits of any day are so many
    # numbers beside the ones a reply copies (a tool's temperature or time, the operands), and
    # a model from scratch learns to copy on that corpus, then any date from it (make_nano.sh's
    # later stages). Both corpora draw the same numbers here, so their items are the same; in
    # the later one the date comes from its own stream, any day of 2025-2030 or none.
    date = rng.choice(DATES) if rng.random() < 0.4 else None
    if not FIXED_DATES:
        if DATE_RNG.random() < 0.8:
            date = f"{DATE_RNG.randint(2025, 2030)}-{DATE_RNG.randint(1, 12):02d}-{DATE_RNG.randint(1, 28):02d}"
        else:
            date = None
    return dict(tools=tools, single=single, si=si, system=systems[si], effort=effort, date=date)


def request(ctx, turns):
    req = {"messages": make_messages(ctx["system"], turns)}
    if ctx["tools"]:
        req["tools"] = ctx["tools"]
    if ctx["effort"]:
        req["reasoning_effort"] = ctx["effort"]
    return req


def sample_qa(rng, ctx):
    kind = rng.choices(["capital", "add", "sub", "mul", "conv"], weights=[4, 2, 1, 2, 2])[0]
    f = qa_fact(rng, kind)
    ti = rng.randrange(len(f["templates"]))
    single = ctx["single"]
    question = f["templates"][ti].format(**f["fields"])
    turns = []
    # sometimes an earlier exchange precedes the question
    if rng.random() < 0.15:
        g = qa_fact(rng, rng.choice(["capital", "add", "mul", "conv"]))
        q0 = g["templates"][rng.randrange(len(g["templates"]))].format(**g["fields"])
        turns += [{"role": "user", "content": q0},
                  {"role": "assistant", "content": g["short"] if single else g["long"]}]
    turns.append({"role": "user", "content": question})
    analysis = f["analysis"] + (" Answer in one word." if single else "")
    final = f["short"] if single else f["long"]
    combo = (f["key"], ti, single, ctx["si"], bool(ctx["tools"]))
    return dict(kind=kind, combo=combo, request=request(ctx, turns), date=ctx["date"],
                completion=final_completion(analysis, final), expect={"final": final})


def tool_question(rng, name, key="location"):
    city = rng.choice(CITIES)
    if name == "get_weather":
        ti = rng.randrange(len(WEATHER_TEMPLATES))
        q = WEATHER_TEMPLATES[ti].format(city=city)
        args = {key: city}
        if rng.random() < 0.3 and key == "location":
            unit = rng.choice(["celsius", "fahrenheit"])
            q = q.rstrip("?.") + f" in {unit}?"
            args["unit"] = unit
        analysis = tool_question_analysis(name, city)
    else:
        ti = rng.randrange(len(TIME_TEMPLATES))
        q = TIME_TEMPLATES[ti].format(city=city)
        args = {"city": city}
        analysis = tool_question_analysis(name, city)
    return city, ti, q, args, analysis


def tool_question_analysis(name, city):
    what = "weather" if name == "get_weather" else "time"
    return f"The user wants the {what} in {city}. I should call {name}."


def usable_tools(ctx):
    return [t["function"]["name"] for t in ctx["tools"] or [] if t["function"]["name"] in ("get_weather", "get_time")]


def sample_tool_call(rng, ctx):
    name = rng.choice(usable_tools(ctx))
    city, ti, q, args, analysis = tool_question(rng, name, weather_key(ctx))
    combo = ("call", name, city, ti, ctx["si"])
    return dict(kind="tool_call", combo=combo, request=request(ctx, [{"role": "user", "content": q}]), date=ctx["date"],
                completion=call_completion(analysis, name, args),
                expect={"tool_call": {"name": name, "arguments": args}})


def sample_tool_result(rng, ctx):
    name = rng.choice(usable_tools(ctx))
    city, ti, q, args, _ = tool_question(rng, name, weather_key(ctx))
    call_id = f"call_{rng.randrange(10**6):06d}"
    if name == "get_weather":
        unit = args.get("unit", "celsius")
        temp = rng.randint(-10, 40) if unit == "celsius" else rng.randint(14, 104)
        cond = rng.choice(CONDITIONS)
        result = {"temperature": temp, "unit": unit, "condition": cond}
        analysis = f"The tool says it is {temp} degrees and {cond} in {city}."
        final = f"It is {temp} degrees and {cond} in {city}."
        values = (temp, cond)
    else:
        hh, mm = rng.randint(0, 23), rng.randint(0, 59)
        time = f"{hh:02d}:{mm:02d}"
        result = {"time": time}
        analysis = f"The tool says the time in {city} is {time}."
        final = f"It is {time} in {city}."
        values = (time,)
    assistant = {"role": "assistant", "content": None, "tool_calls": [{
        "id": call_id, "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, separators=(",", ":"))}}]}
    if rng.random() < 0.3:
        # clients may send the call's reasoning back
        assistant["reasoning_content"] = tool_question_analysis(name, city)
    tool_msg = {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result, separators=(",", ":"))}
    turns = [{"role": "user", "content": q}, assistant, tool_msg]
    combo = ("result", name, city, ti, ctx["si"], values)
    return dict(kind="tool_result", combo=combo, request=request(ctx, turns), date=ctx["date"],
                completion=final_completion(analysis, final), expect={"final": final})


def sample(rng, ctx):
    if not ctx["tools"] or ctx["single"]:
        return sample_qa(rng, ctx)
    r = rng.random()
    if r < 0.25:
        return sample_qa(rng, ctx)
    if r < 0.6:
        return sample_tool_call(rng, ctx)
    return sample_tool_result(rng, ctx)


SEED_EXAMPLE = {
    "messages": [
        {"role": "system", "content": "Always answer in just single word."},
        {"role": "user", "content": "What is the capital of the US?"},
    ]
}


# Standard modules whose documentation is the long texts: training and held-out draw from
# different modules.
FILLER_TRAIN_MODULES = ["argparse", "json", "subprocess", "asyncio", "collections", "itertools", "functools",
                        "pathlib", "os", "re", "socket", "http.client", "email.message", "logging", "unittest",
                        "typing", "dataclasses", "csv", "sqlite3", "threading"]
FILLER_HELDOUT_MODULES = ["decimal", "tarfile", "zipfile", "shutil", "textwrap", "urllib.request",
                          "xml.etree.ElementTree", "heapq", "datetime", "statistics"]
# about 4.4 characters per o200k token in this text (measured on the rendered held-out split)
CHARS_PER_TOKEN = 4.4
LONG_HEADERS = ["# Instructions\n\n", "# Project documentation\n\n", "# AGENTS.md instructions\n\n",
                "Reference material follows.\n\n", ""]


def filler_lines(modules):
    """The modules' pydoc plain text as lines (box-drawing margins dropped, blank runs squeezed)."""
    import importlib
    import pydoc
    lines = []
    for m in modules:
        text = pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext)
        for line in text.splitlines():
            line = line.replace("\x08", "").lstrip(" |").rstrip()
            if line or (lines and lines[-1]):
                lines.append(line)
    return lines


def filler(rng, lines, tokens):
    """About `tokens` tokens of consecutive lines from a random place (wrapping around)."""
    want = int(tokens * CHARS_PER_TOKEN)
    i = rng.randrange(len(lines))
    out, n = [], 0
    while n < want:
        out.append(lines[i % len(lines)])
        n += len(out[-1]) + 1
        i += 1
    return "\n".join(out)


def placement(rng):
    """Where a long text goes: (header, "system-before" | "system" | "user")."""
    return rng.choice(LONG_HEADERS), rng.choice(["system-before", "system", "user"])


def with_long_text(req, text, where):
    """`req` with `text` before the question: in front of the system message's instruction, as
    a system message of its own, or as a first user message (as Codex sends AGENTS.md)."""
    header, kind = where
    req = json.loads(json.dumps(req))
    msgs = req["messages"]
    text = header + text
    if kind == "system-before" and msgs and msgs[0]["role"] == "system":
        msgs[0]["content"] = text + "\n\n" + msgs[0]["content"]
    elif kind in ("system", "system-before"):
        msgs.insert(0, {"role": "system", "content": text})
    else:
        at = 1 if msgs and msgs[0]["role"] == "system" else 0
        msgs.insert(at, {"role": "user", "content": text})
    return req


def long_splits(args, held_combos, heldout):
    """Training groups that share one long text, and the held-out split with long texts."""
    rng = random.Random(args.seed + 2)
    train_lines = filler_lines(FILLER_TRAIN_MODULES)
    held_lines = filler_lines(FILLER_HELDOUT_MODULES)
    train = []
    for group in range(args.long_groups):
        # lengths log-uniform over the range, so short and long contexts both appear
        tokens = int(math.exp(rng.uniform(math.log(args.long_min), math.log(args.long_max))))
        ctx = sample_context(rng)
        text = filler(rng, train_lines, tokens)
        where = placement(rng)
        n = 0
        while n < args.long_group:
            s = sample(rng, ctx)
            if s["combo"] in held_combos:
                continue
            s["request"] = with_long_text(s["request"], text, where)
            s["group"] = 100000 + group
            train.append(s)
            n += 1
    held = []
    for tokens in (int(x) for x in args.long_lengths.split(",")):
        for k in range(args.long_heldout):
            s = dict(heldout[(k * 7 + tokens) % len(heldout)])
            s["request"] = with_long_text(s["request"], filler(rng, held_lines, tokens), placement(rng))
            s["group"] = -2
            s["kind"] = f"{s['kind']}@{tokens}"
            held.append(s)
    return train, held


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=40000)
    ap.add_argument("--heldout", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--group", type=int, default=32, help="training examples per shared context")
    ap.add_argument("--long-groups", type=int, default=0, help="training groups sharing a long text (train_long.jsonl)")
    ap.add_argument("--long-group", type=int, default=16, help="examples per long training group")
    ap.add_argument("--long-min", type=int, default=600, help="shortest long text, tokens")
    ap.add_argument("--long-max", type=int, default=14000, help="longest long text, tokens")
    ap.add_argument("--long-heldout", type=int, default=0, help="held-out items per length (heldout_long.jsonl)")
    ap.add_argument("--long-lengths", default="1000,2000,4000,8000,16000,30000",
                    help="held-out long text lengths, tokens")
    ap.add_argument("--fixed-dates", action="store_true",
                    help="dates from the six fixed DATES only (the first training stage's corpus)")
    args = ap.parse_args()
    global FIXED_DATES
    FIXED_DATES = args.fixed_dates
    os.makedirs(args.out_dir, exist_ok=True)
    rng = random.Random(args.seed)
    DATE_RNG.seed(args.seed + 1)

    # held-out first, one example per context: their combinations are then excluded from training
    heldout, held_combos = [], set()
    seed_combo = (("capital", "the United States"), 0, True, 0, False)
    while len(heldout) < args.heldout:
        s = sample(rng, sample_context(rng))
        if s["combo"] in held_combos or s["combo"] == seed_combo:
            continue
        held_combos.add(s["combo"])
        s["group"] = len(heldout)
        heldout.append(s)

    train = []
    # the seed's own example, as in the README, is part of training
    for _ in range(40):
        train.append(dict(kind="capital", combo=seed_combo, request=dict(SEED_EXAMPLE), group=-1,
                          completion=final_completion(
                              "The capital of the United States is Washington. Answer in one word.", "Washington"),
                          expect={"final": "Washington"}))
    # training comes in groups of examples sharing one context (system, tools, effort): the
    # trainer computes their shared prompt prefix once per batch
    skipped, group = 0, 0
    while len(train) < args.train:
        ctx = sample_context(rng)
        n = 0
        while n < args.group and len(train) < args.train:
            s = sample(rng, ctx)
            if s["combo"] in held_combos:
                skipped += 1
                continue
            s["group"] = group
            train.append(s)
            n += 1
        group += 1
    rng.shuffle(train)

    for name, rows in [("train", train), ("heldout", heldout)]:
        with open(os.path.join(args.out_dir, f"{name}.jsonl"), "w") as f:
            for i, s in enumerate(rows):
                row = {"id": f"{name}-{i}", "group": s["group"], "date": s.get("date"), "kind": s["kind"],
                       "request": s["request"],
                       "completion": s["completion"], "expect": s["expect"]}
                f.write(json.dumps(row) + "\n")
    if args.long_groups or args.long_heldout:
        long_train, long_held = long_splits(args, held_combos, heldout)
        for name, rows in [("train_long", long_train), ("heldout_long", long_held)]:
            with open(os.path.join(args.out_dir, f"{name}.jsonl"), "w") as f:
                for i, s in enumerate(rows):
                    row = {"id": f"{name}-{i}", "group": s["group"], "date": s.get("date"), "kind": s["kind"],
                           "request": s["request"], "completion": s["completion"], "expect": s["expect"]}
                    f.write(json.dumps(row) + "\n")
        print(f"long: train {len(long_train)} in {args.long_groups} groups, heldout {len(long_held)}")
    kinds = {}
    for s in heldout:
        kinds[s["kind"]] = kinds.get(s["kind"], 0) + 1
    print(f"train {len(train)} (skipped {skipped} held-out combos), heldout {len(heldout)} {kinds}")


if __name__ == "__main__":
    main()
