#!/bin/sh
# Build the image on an ECS host with Docker, check it against ModelArts' size limit, tag it for SWR, push it,
# and print the address to give ModelArts. For images over 35 GB, which ModelArts asks to build this way.
#
# Usage: deploy/build_and_push.sh --region REGION --org ORG [--name NAME] [--tag TAG]
#            [--base-image IMAGE] [--torch PIP-SPEC] [--gpu-arch sm_XY ...] [--context DIR] [--expected-gb N]
#            [--no-push] [-- EXTRA DOCKER BUILD ARGS]
# Environment: DOCKER (the docker command, default docker), SWR_USER and SWR_PASSWORD (optional: log in to
# SWR first; else run `docker login` yourself), SIZE_LIMIT_GB (default 50, in GB of 10^9 bytes as docker shows),
# LAYER_LIMIT_GB (default 10: SWR's limit per layer for a container engine client), PUSH_ATTEMPTS (default 4) and
# PUSH_PAUSE_S (default 30: a dropped push is run again; the registry skips the layers it already has).
# Exit codes: 0 pushed (or built, with --no-push), 2 bad arguments, 3 not enough disk, 4 image or a layer over
# the limit, 5 a docker command failed, 6 the models' torch is not built for the base image's CUDA (the GPU gate).
set -eu

usage() { sed -n '5,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { code=$1; shift; echo "build_and_push: $*" >&2; exit "$code"; }
run() { echo "+ $*"; "$@" || die 5 "failed: $*"; }

DOCKER=${DOCKER:-docker}
SIZE_LIMIT_GB=${SIZE_LIMIT_GB:-50}
LAYER_LIMIT_GB=${LAYER_LIMIT_GB:-10}
PUSH_ATTEMPTS=${PUSH_ATTEMPTS:-4}
PUSH_PAUSE_S=${PUSH_PAUSE_S:-30}
LARGE_GB=35
region= org= name=triton-modelarts tag=$(date +%Y%m%d-%H%M%S) base= torch= gpu_archs= push=1 expected_gb=10
context=$(cd "$(dirname "$0")/.." && pwd)

while [ $# -gt 0 ]; do
    case $1 in
        --region) region=${2:-}; shift 2 || usage ;;
        --org) org=${2:-}; shift 2 || usage ;;
        --name) name=${2:-}; shift 2 || usage ;;
        --tag) tag=${2:-}; shift 2 || usage ;;
        --base-image) base=${2:-}; shift 2 || usage ;;
        --torch) torch=${2:-}; shift 2 || usage ;;
        --gpu-arch) gpu_archs="$gpu_archs $(echo "${2:-}" | tr ',' ' ')"; shift 2 || usage ;;
        --context) context=${2:-}; shift 2 || usage ;;
        --expected-gb) expected_gb=${2:-}; shift 2 || usage ;;
        --no-push) push=; shift ;;
        -h|--help) usage ;;
        --) shift; break ;;
        *) echo "build_and_push: unknown argument: $1" >&2; usage ;;
    esac
done

[ -n "$region" ] && [ -n "$org" ] || { echo "build_and_push: --region and --org are required" >&2; usage; }
echo "$region" | grep -Eq '^[a-z]{2}(-[a-z]+)+-[0-9]+$' || die 2 "--region '$region' does not look like cn-north-4"
echo "$org" | grep -Eq '^[a-z0-9][a-z0-9._-]{0,63}$' || die 2 "--org '$org': lower-case letters, digits, . _ -"
echo "$name" | grep -Eq '^[a-z0-9][a-z0-9._/-]{0,127}$' || die 2 "--name '$name': lower-case letters, digits, . _ - /"
echo "$tag" | grep -Eq '^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$' || die 2 "--tag '$tag' is not a valid image tag"
echo "$expected_gb" | grep -Eq '^[0-9]+$' || die 2 "--expected-gb must be a whole number of GB"
echo "$LAYER_LIMIT_GB" | grep -Eq '^[0-9]+([.][0-9]+)?$' || die 2 "LAYER_LIMIT_GB '$LAYER_LIMIT_GB' is not a number of GB"
echo "$PUSH_ATTEMPTS" | grep -Eq '^[1-9][0-9]*$' || die 2 "PUSH_ATTEMPTS '$PUSH_ATTEMPTS' is not a count"
for a in $gpu_archs; do
    echo "$a" | grep -Eq '^sm_[0-9]+$' || die 2 "--gpu-arch '$a': give an architecture such as sm_70 (V100) or sm_90 (H100)"
done
[ -f "$context/Dockerfile" ] || die 2 "no Dockerfile in the build context $context"

registry="swr.$region.myhuaweicloud.com"
local_ref="$name:$tag"
remote_ref="$registry/$org/$name:$tag"

# 1. Disk: the build context is sent to the daemon, and the image's layers are written once while building and
#    held once more while exporting, so ask for context + 2 x the expected image size where Docker keeps images.
root_dir=$("$DOCKER" info --format '{{.DockerRootDir}}' 2>/dev/null || true)
[ -n "$root_dir" ] && [ -d "$root_dir" ] || root_dir=$context
context_kb=$(du -sk "$context" | cut -f1)
need_kb=$(( context_kb + expected_gb * 2 * 1000000 ))
free_kb=$(df -Pk "$root_dir" | awk 'NR == 2 { print $4 }')
echo "disk: $(( free_kb / 1000000 )) GB free under $root_dir; context $(( context_kb / 1000 )) MB; need about $(( need_kb / 1000000 )) GB for an image of ~${expected_gb} GB"
[ "$free_kb" -ge "$need_kb" ] || die 3 "not enough disk under $root_dir: $(( free_kb / 1000000 )) GB free, need $(( need_kb / 1000000 )) GB (grow the ECS data disk, or pass --expected-gb)"

# 2. Build with BuildKit.
set -- ${base:+--build-arg "BASE_IMAGE=$base"} ${torch:+--build-arg "TORCH=$torch"} "$@"
started=$(date +%s)
DOCKER_BUILDKIT=1 run "$DOCKER" build --tag "$local_ref" "$@" "$context"
built=$(date +%s)
echo "built $local_ref in $(( built - started ))s"

# 3. Layer gate, before anything slower: SWR refuses a layer over 10 GB pushed with a container engine client (its
#    FAQ; a newer manual page says 50 GB, and regions differ: LAYER_LIMIT_GB), after much of the upload. Each
#    layer's size comes from the engine's own history, with the Dockerfile step that made it.
history=$("$DOCKER" history --human=false --no-trunc --format '{{.Size}}	{{.CreatedBy}}' "$local_ref") \
    || die 5 "cannot read the layers of $local_ref"
# Docker gives bytes (--human=false); podman 4 gives its human form (25.6 kB, 3.01 MB: powers of 1000) whatever
# the flag says. Both become bytes here.
history=$(printf '%s\n' "$history" | awk -F '\t' '
    { n = $1; u = $1; sub(/[ ]*[A-Za-z]+$/, "", n); sub(/^[0-9.]+[ ]*/, "", u)
      m = (u == "kB" || u == "KB") ? 1e3 : (u == "MB") ? 1e6 : (u == "GB") ? 1e9 : (u == "TB") ? 1e12 : 1
      printf "%.0f\t%s\n", n * m, $2 }')
over=$(printf '%s\n' "$history" | awk -F '\t' -v l="$LAYER_LIMIT_GB" '$1 + 0 > l * 1e9 {
    step = $2; gsub(/[[:space:]]+/, " ", step); sub(/^\/bin\/(ba)?sh -c (#\(nop\) )?/, "", step)
    printf "%.2f GB (%.0f MB): %s\n", $1 / 1e9, $1 / 1e6, substr(step, 1, 160) }')
largest=$(printf '%s\n' "$history" | awk -F '\t' 'BEGIN { m = 0 } $1 + 0 > m { m = $1 + 0 } END { printf "%.2f", m / 1e9 }')
count=$(printf '%s\n' "$history" | awk -F '\t' '$1 + 0 > 0' | wc -l)
if [ -n "$over" ]; then
    printf '%s\n' "$over" | sed 's/^/layer over the limit: /' >&2
    die 4 "$local_ref has a layer over SWR's ${LAYER_LIMIT_GB} GB per layer (above; the step that made it after the size): the push would fail after uploading. Split the model repository into one layer per model (make dockerfile writes the Dockerfile's COPY per model folder, splitting a folder over the limit by its files), or keep the weights outside the image (a ModelArts model package at /home/mind/model, or OBS through /obs-mount: docs/ecs.md)"
fi
echo "layer gate passed: $count layers with content, the largest $largest GB (limit ${LAYER_LIMIT_GB} GB per layer)"

# 4. Size gate: ModelArts refuses images over 50 GB.
size=$("$DOCKER" image inspect --format '{{.Size}}' "$local_ref") || die 5 "cannot inspect $local_ref"
echo "$size" | grep -Eq '^[0-9]+$' || die 5 "unexpected image size '$size' for $local_ref"
size_gb=$(awk -v b="$size" 'BEGIN { printf "%.2f", b / 1e9 }')
echo "image size: $size_gb GB ($size bytes)"
if awk -v b="$size" -v l="$SIZE_LIMIT_GB" 'BEGIN { exit !(b > l * 1e9) }'; then
    die 4 "$local_ref is $size_gb GB, over ModelArts' ${SIZE_LIMIT_GB} GB limit: move weights to OBS (/obs-mount) or slim the image"
fi
if awk -v b="$size" -v l="$LARGE_GB" 'BEGIN { exit !(b > l * 1e9) }'; then
    echo "note: over ${LARGE_GB} GB, so it must be built and pushed from ECS as here, not imported through the console"
fi

# 5. GPU gate: the models' torch must be built for the base image's CUDA, or the service would serve from the
#    CPU on ModelArts' GPUs (or not start). Read from inside the image: the base's CUDA_VERSION, and torch's
#    version, CUDA and compiled architectures (from its build flags: no GPU is needed on the build host).
gate_py='import torch
cuda = torch.version.cuda or ""
flags = torch._C._cuda_getArchFlags() if cuda and hasattr(torch._C, "_cuda_getArchFlags") else ""
print("torch=" + torch.__version__)
print("torch_cuda=" + cuda)
print("arch=" + flags)'
gate=$("$DOCKER" run --rm --entrypoint sh "$local_ref" -c \
    'echo "base_cuda=${CUDA_VERSION:-}"; "${MODEL_PYTHON:-python3}" -c "$1" 2>/dev/null || echo "torch=none"' \
    sh "$gate_py") || die 5 "cannot run $local_ref to read its torch"
field() { echo "$gate" | sed -n "s/^$1=//p" | head -n 1; }
base_cuda=$(field base_cuda) torch_version=$(field torch) torch_cuda=$(field torch_cuda) archs=$(field arch)
echo "models' torch: ${torch_version:-none}, CUDA ${torch_cuda:-none}, architectures: ${archs:-none}; base image CUDA: ${base_cuda:-none}"
if [ -z "$torch_version" ] || [ "$torch_version" = none ]; then
    echo "note: no torch in the models' Python: GPU gate skipped"
elif [ -z "$base_cuda" ]; then
    echo "note: the base image declares no CUDA_VERSION (a CPU image): GPU gate skipped"
elif [ -z "$torch_cuda" ]; then
    die 6 "torch $torch_version is a CPU-only build on a CUDA $base_cuda base: every model would run on the CPU. Pin a CUDA build of torch for CUDA ${base_cuda%%.*} (--torch, see docs/container.md: GPU compatibility)"
elif [ "${torch_cuda%%.*}" != "${base_cuda%%.*}" ]; then
    die 6 "torch $torch_version is built for CUDA $torch_cuda, but the base image has CUDA $base_cuda. A CUDA ${torch_cuda%%.*} torch needs a driver for CUDA ${torch_cuda%%.*} (CUDA 13: driver 580 or later, and no Volta/V100) and would fail on GPUs the base image supports. Pin torch for CUDA ${base_cuda%%.*}, e.g. --torch torch==2.7.1 (cu126) for NGC 24.10 (docs/container.md: GPU compatibility)"
else
    minor_t=${torch_cuda#*.}; minor_t=${minor_t%%.*}; minor_b=${base_cuda#*.}; minor_b=${minor_b%%.*}
    if [ "$minor_t" -gt "$minor_b" ] 2>/dev/null; then
        echo "note: torch's CUDA $torch_cuda is newer than the base's $base_cuda: it needs a driver for $torch_cuda, or CUDA minor-version compatibility (driver 525 or later, no PTX JIT)"
    fi
    echo "GPU gate passed: torch CUDA $torch_cuda on a CUDA $base_cuda base"
fi
for want in $gpu_archs; do
    # A sm_XY binary runs on the same major with an equal or higher minor; compute_XY (PTX) on XY or higher.
    if ! echo "$archs" | tr ' ' '\n' | awk -v w="${want#sm_}" '
        { n = $0; sub(/^(sm|compute)_/, "", n); sub(/a$/, "", n)
          wmaj = int(w / 10); nmaj = int(n / 10)
          if ($0 ~ /^sm_/ && nmaj == wmaj && n + 0 <= w + 0) ok = 1
          if ($0 ~ /^compute_/ && n + 0 <= w + 0) ok = 1 }
        END { exit !ok }'; then
        echo "warning: torch ${torch_version:-?} has no kernels for $want (built for ${archs:-nothing}): models would fail to load on such GPUs" >&2
    fi
done

gated=$(date +%s)

# The summary: how long each phase took, and the image's layers with their sizes (largest first).
summary() {
    echo "summary: build $(( built - started ))s, gates $(( gated - built ))s${1:+, push $1}"
    printf '%s\n' "$history" | awk -F '\t' '$1 + 0 > 0 {
        step = $2; gsub(/[[:space:]]+/, " ", step); sub(/^\/bin\/(ba)?sh -c (#\(nop\) )?/, "", step)
        printf "%12.3f GB  %s\n", $1 / 1e9, substr(step, 1, 100) }' | sort -rn | sed 's/^/  layer /'
}

# 6. Tag for SWR, log in if credentials are given, push.
run "$DOCKER" tag "$local_ref" "$remote_ref"
if [ -z "$push" ]; then
    echo "not pushed (--no-push): $remote_ref"
    summary
    exit 0
fi
if [ -n "${SWR_USER:-}" ]; then
    echo "+ $DOCKER login --username $SWR_USER --password-stdin $registry"
    printf '%s' "${SWR_PASSWORD:?SWR_PASSWORD must be set with SWR_USER}" \
        | "$DOCKER" login --username "$SWR_USER" --password-stdin "$registry" || die 5 "docker login to $registry failed"
fi
# SWR has no resumable push: a dropped connection fails the whole push, and a new push skips the layers the
# registry already holds. So a failed push runs again, PUSH_ATTEMPTS times at most, PUSH_PAUSE_S apart.
attempt=1
while :; do
    echo "+ $DOCKER push $remote_ref (attempt $attempt of $PUSH_ATTEMPTS)"
    if "$DOCKER" push "$remote_ref"; then
        break
    fi
    [ "$attempt" -lt "$PUSH_ATTEMPTS" ] || die 5 "push of $remote_ref failed $attempt times; run this again later (the layers already uploaded are kept), or check the network to $registry and the SWR quota"
    echo "push failed (attempt $attempt of $PUSH_ATTEMPTS): pushing again in ${PUSH_PAUSE_S}s (the layers the registry already has are skipped)"
    sleep "$PUSH_PAUSE_S"
    attempt=$(( attempt + 1 ))
done
summary "$(( $(date +%s) - gated ))s (attempts: $attempt)"
echo "image address for ModelArts: $remote_ref"
