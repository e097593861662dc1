"""The Dockerfile's model layers: one COPY per model folder, so that no image layer holds more than SWR accepts
(10 GB per layer with a container engine client) and a change to one model rebuilds only its layers. A model folder
over the limit is split by its files, grouped in order of their paths up to the limit (a file alone over it is
named: it cannot be split, and its weights belong outside the image: docs/ecs.md).

    python deploy/model_layers.py [--limit-gb 10] [--write | --check] [--dockerfile Dockerfile] [model_repository]

Prints the fragment; --write puts it between the Dockerfile's markers, --check exits 1 when they hold another one
(`make dockerfile` writes it; make test checks it). What the build context leaves out (.dockerignore: __pycache__,
train.py, generated weights) is left out here too.
"""
import argparse
import fnmatch
import os
import sys

BEGIN = "# BEGIN model layers (deploy/model_layers.py writes them: make dockerfile)"
END = "# END model layers"
DEST = "/opt/serving/model_repository"
CHOWN = "--chown=ma-user:100"


def ignored_patterns(root):
    """The exclusions of the build context's .dockerignore (its `!` re-inclusions are of whole top-level folders)."""
    try:
        with open(os.path.join(root, ".dockerignore")) as f:
            lines = [line.strip() for line in f]
    except FileNotFoundError:
        return []
    return [line for line in lines if line and not line.startswith(("#", "!")) and line != "*"]


def ignored(path, patterns):
    parts = path.split("/")
    for pattern in patterns:
        pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(p, pattern) for p in parts) or fnmatch.fnmatch(path, pattern) or \
                any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts))):
            return True
    return False


def files_of(root, folder, patterns):
    """[(path relative to root, size)] of a model folder's files in the build context, in path order."""
    found = []
    for here, dirs, names in os.walk(os.path.join(root, folder)):
        dirs.sort()
        for name in sorted(names):
            path = os.path.relpath(os.path.join(here, name), root).replace(os.sep, "/")
            if not ignored(path, patterns):
                found.append((path, os.path.getsize(os.path.join(root, path))))
    return found


def layers(root, repository, limit):
    """[(sources, destination)]: a COPY each. `repository` is relative to `root` (the build context)."""
    patterns = ignored_patterns(root)
    out = []
    top = sorted(os.listdir(os.path.join(root, repository)))
    loose = [f"{repository}/{n}" for n in top if os.path.isfile(os.path.join(root, repository, n))
             and not ignored(f"{repository}/{n}", patterns)]
    if loose:
        out.append((loose, DEST + "/"))
    for name in top:
        folder = f"{repository}/{name}"
        if not os.path.isdir(os.path.join(root, folder)) or ignored(folder, patterns):
            continue
        files = files_of(root, folder, patterns)
        if sum(size for _, size in files) <= limit:
            out.append(([folder + "/"], f"{DEST}/{name}/"))
            continue
        group, held, where = [], 0, None   # one COPY per directory and size group: COPY keeps no source paths
        for path, size in files:
            directory = path.rsplit("/", 1)[0]
            if group and (directory != where or held + size > limit):
                out.append((group, DEST + where[len(repository):] + "/"))
                group, held = [], 0
            if size > limit:
                print(f"model_layers: {path} alone is {size / 1e9:.2f} GB, over the {limit / 1e9:g} GB layer limit: "
                      "it cannot be split; keep such weights outside the image (docs/ecs.md)", file=sys.stderr)
            group.append(path)
            held += size
            where = directory
        if group:
            out.append((group, DEST + where[len(repository):] + "/"))
    return out


def fragment(root, repository, limit):
    lines = [BEGIN]
    for sources, dest in layers(root, repository, limit):
        lines.append(f"COPY {CHOWN} {' '.join(sources)} {dest}")
    lines.append(END)
    return "\n".join(lines)


def replaced(dockerfile_text, new):
    start, end = dockerfile_text.index(BEGIN), dockerfile_text.index(END) + len(END)
    return dockerfile_text[:start] + new + dockerfile_text[end:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", nargs="?", default="model_repository")
    parser.add_argument("--dockerfile", default="Dockerfile")
    parser.add_argument("--limit-gb", type=float, default=float(os.environ.get("LAYER_LIMIT_GB", 10)))
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true")
    what.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.abspath(args.dockerfile))
    repository = os.path.relpath(os.path.abspath(args.repository), root).replace(os.sep, "/")
    new = fragment(root, repository, args.limit_gb * 1e9)
    if not (args.write or args.check):
        print(new)
        return 0
    with open(args.dockerfile) as f:
        text = f.read()
    if args.check:
        if replaced(text, new) != text:
            print(f"model_layers: {args.dockerfile}'s model layers are not those of {args.repository}: run make "
                  "dockerfile", file=sys.stderr)
            return 1
        return 0
    with open(args.dockerfile, "w") as f:
        f.write(replaced(text, new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
