#!/usr/bin/env bash
# `callverify dtmf detect` against SpanDSP's dtmf_rx on the same 1-hour 8 kHz WAV, side by side
# in one run (issue 9, item 5): speed as × real time, peak resident memory, and whether both
# found the same digits.
#
# The WAV (16-bit PCM, 8 kHz, mono) is made here: digits from `callverify dtmf generate`
# (ITU-T Q.23 tones, 100 ms on, one every 5.2 s, every key) mixed by sox with white noise
# about 23 dB below the tones. SpanDSP runs through scripts/bench-detect/spandsp_detect.c,
# which reads the file in 256 KiB pieces as callverify does and prints the digits the same way.
# Each detector runs RUNS times (default 5) after one warm-up run that brings the file into
# the page cache; the best time counts (the least disturbed by other work on the machine), and
# peak RSS is the largest seen (/usr/bin/time -v).
#
# Usage: scripts/bench-detect.sh [WORKDIR]      (default: a temporary directory, removed after)
# Needs: a C compiler, libspandsp-dev, sox, GNU time (installed with apt when missing, as root).
# Target (issue 9): callverify ≥ 2× SpanDSP's × real time, ≤ 16 MB peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
runs=${RUNS:-5}
seconds=3600

need=()
dpkg-query -W -f='${Status}' libspandsp-dev 2>/dev/null | grep -q "ok installed" || need+=(libspandsp-dev)
command -v sox >/dev/null || need+=(sox)
[ -x /usr/bin/time ] || need+=(time)
command -v cc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update
  $sudo_cmd apt-get install -y --no-install-recommends "${need[@]}"
fi

if [ $# -ge 1 ]; then
  work=$1
  mkdir -p "$work"
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
fi

cargo build --release --quiet --bin callverify
callverify=$root/target/release/callverify
cc -O2 -o "$work/spandsp_detect" scripts/bench-detect/spandsp_detect.c -lspandsp

wav=$work/hour.wav
# Every key in turn (stride 7 through the 16), each followed by five one-second pauses: 5.2 s
# per key, 692 keys in the hour.
keys=""
all="0123456789*#ABCD"
for ((i = 0; i < seconds * 10 / 52; i++)); do
  keys+="${all:$(( (i * 7) % 16 )):1},,,,,"
done
expected=${keys//,/}
if [ ! -s "$wav" ]; then
  "$callverify" dtmf generate "$keys" -o "$work/tones.wav" --level-dbm0 -10 --on-ms 100 --off-ms 100
  sox -n -r 8000 -b 16 -c 1 "$work/noise.wav" synth "$seconds" whitenoise vol 0.05
  sox -m -v 1 "$work/tones.wav" -v 1 "$work/noise.wav" -r 8000 -b 16 -c 1 -e signed-integer \
      "$wav" trim 0 "$seconds"
  rm -f "$work/tones.wav" "$work/noise.wav"
fi

# One measured run: prints "wall_seconds cpu_seconds peak_kib" and leaves the digits in
# $work/$name.out. Wall time from the clock around it (ns), CPU (user + system) and peak RSS
# from GNU time.
measure() { # name command...
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s%N)
  /usr/bin/time -v -o "$work/$name.time" "$@" >"$work/$name.out"
  t1=$(date +%s%N)
  awk -F': ' -v ns=$((t1 - t0)) '
    /User time/ { cpu += $2 } /System time/ { cpu += $2 }
    /Maximum resident set size/ { rss = $2 }
    END { printf "%.4f %.2f %d\n", ns / 1e9, cpu, rss }' "$work/$name.time"
}

# Best wall and CPU time, largest RSS, of each detector; the runs alternate between the two
# so that both see the same machine (other work on it comes and goes).
declare -A best_s best_cpu max_rss
cv=("$callverify" dtmf detect "$wav")
sd=("$work/spandsp_detect" "$wav")
"${cv[@]}" >/dev/null # warm-up: the file in the page cache, the binaries loaded
"${sd[@]}" >/dev/null
for ((r = 0; r < runs; r++)); do
  for name in callverify spandsp; do
    if [ $name = callverify ]; then cmd=("${cv[@]}"); else cmd=("${sd[@]}"); fi
    read -r s cpu rss < <(measure $name "${cmd[@]}")
    if [ -z "${best_s[$name]:-}" ] || awk -v a="$s" -v b="${best_s[$name]}" 'BEGIN { exit !(a < b) }'; then
      best_s[$name]=$s
    fi
    if [ -z "${best_cpu[$name]:-}" ] || awk -v a="$cpu" -v b="${best_cpu[$name]}" 'BEGIN { exit !(a < b) }'; then
      best_cpu[$name]=$cpu
    fi
    [ "$rss" -gt "${max_rss[$name]:-0}" ] && max_rss[$name]=$rss
  done
done
cv_s=${best_s[callverify]} cv_cpu=${best_cpu[callverify]} cv_rss=${max_rss[callverify]}
sd_s=${best_s[spandsp]} sd_cpu=${best_cpu[spandsp]} sd_rss=${max_rss[spandsp]}

cv_digits=$(tr -d '\n' <"$work/callverify.out")
sd_digits=$(tr -d '\n' <"$work/spandsp.out")
xrt() { awk -v s="$1" -v d="$seconds" 'BEGIN { if (s <= 0) s = 0.001; printf "%.0f", d / s }'; }
cv_x=$(xrt "$cv_s")
sd_x=$(xrt "$sd_s")
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "1-hour 8 kHz WAV, $(stat -c %s "$wav") bytes, ${#expected} key presses in white noise; best of $runs runs"
printf '%-24s %9s %13s %9s %13s %7s\n' detector "wall, s" "× real time" "CPU, s" "peak RSS, MB" digits
printf '%-24s %9s %13s %9s %13s %7s\n' "callverify dtmf detect" "$cv_s" "$cv_x" "$cv_cpu" "$(mb "$cv_rss")" "${#cv_digits}"
printf '%-24s %9s %13s %9s %13s %7s\n' "SpanDSP dtmf_rx" "$sd_s" "$sd_x" "$sd_cpu" "$(mb "$sd_rss")" "${#sd_digits}"
ratio=$(awk -v a="$cv_x" -v b="$sd_x" 'BEGIN { printf "%.2f", a / b }')
echo "callverify / SpanDSP: ${ratio}×"

status=0
if [ "$cv_digits" != "$sd_digits" ]; then
  echo "DIFFERENT DIGITS: callverify found ${#cv_digits}, SpanDSP ${#sd_digits}" >&2
  cmp <(fold -w1 <<<"$cv_digits") <(fold -w1 <<<"$sd_digits") >&2 || true
  status=1
else
  echo "same digits from both (${#cv_digits})"
fi
if [ -n "$expected" ] && [ "$cv_digits" != "$expected" ]; then
  echo "callverify's digits differ from the ones generated" >&2
  status=1
fi
awk -v r="$ratio" 'BEGIN { exit !(r >= 2.0) }' || { echo "below the 2× target" >&2; status=1; }
[ "$cv_rss" -le $((16 * 1024)) ] || { echo "callverify peak RSS above 16 MB" >&2; status=1; }
exit $status
