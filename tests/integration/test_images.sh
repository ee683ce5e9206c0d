#!/usr/bin/env bash
# Sticker pictures end to end (issue 14): `builder generate --images` draws them, the corpus
# names them in "image", the shards store the reference, and the broker returns it (image and
# image_url in GET /v1/stickers/{id} and in explain=1 hits) and serves the files read-only under
# --image-root at /images/.
#   1. A sticker with a picture: its image and image_url; GET image_url returns the very bytes
#      the generator wrote, as image/png with a Cache-Control; a URL image passes through; a
#      sticker without one has neither key; explain=1 hits carry them too; a path with a
#      space, "+", "%" and UTF-8 gets a percent-encoded image_url that loads the file.
#   2. Refused, in the JSON error shape: links under the root (to /etc/passwd, to a file
#      outside, a directory link out) 403; "..", encoded %2e%2e and %2f, an absolute path, NUL,
#      a directory, a non-image, a missing file 404; a file over the cap 413. None of them
#      answers with the linked file's bytes.
#   3. A broker without --image-root: /images/ is 404; one with a root that is not a directory
#      does not start. The search page at / is text/html; POST / is 405.
#   4. The persrv CLI shows the picture: `sticker --broker --json` has image (none: no key), and
#      `search --broker --json` and `search --index --json` agree hit for hit, images included.
# usage: test_images.sh BUILDER SHARD SHARD_CLIENT BROKER PERSRV
set -euo pipefail
B=$1
S=$2
C=$3
BR=$4
P=$5
. "$(dirname "$0")/lib.sh"
ps_test_init images
command -v curl >/dev/null || fail "curl is required (scripts/deps.sh installs it)"
command -v jq >/dev/null || fail "jq is required (scripts/deps.sh installs it)"

$B generate --out "$T/data" --stickers 3000 --dim 16 --users 2 --clicks 300 --pairs 60 \
  --queries 40 --images 300 --no-progress 2>"$T/gen.log" || fail "generate: $(cat "$T/gen.log")"
[ "$(grep -c '"image":' "$T/data/corpus.jsonl")" = 300 ] || fail "not 300 stickers with a picture"
[ "$(find "$T/data/images" -name '*.png' | wc -l)" = 300 ] || fail "not 300 PNG files"
# line 1: an http(s) URL instead of the generated path
sed -i '1s|"image":"[^"]*"|"image":"https://img.example.com/s/1.png?x=1"|' "$T/data/corpus.jsonl"
# line 3: a path that needs percent-encoding in its image_url
mkdir -p "$T/data/images/zz"
cp "$T/data/images/$(sed -n 3p "$T/data/corpus.jsonl" | jq -r .image)" \
  "$T/data/images/zz/sp ace+%é.png"
sed -i '3s|"image":"[^"]*"|"image":"zz/sp ace+%é.png"|' "$T/data/corpus.jsonl"
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/cluster" --shards 2 >"$T/build.out" 2>&1 \
  || fail "build: $(cat "$T/build.out")"
$B build --corpus "$T/data/corpus.jsonl" --embeddings "$T/data/embeddings.npy" \
  --clicks "$T/data/clicks.tsv" --out "$T/single" >"$T/build.out" 2>&1 \
  || fail "single-node build: $(cat "$T/build.out")"

# The root and the traps in it.
R=$T/data/images
mkdir -p "$T/outside/sub"
cp "$(find "$R" -name '*.png' | sort | head -n 1)" "$T/outside/secret.png"
cp "$T/outside/secret.png" "$T/outside/sub/secret.png"
ln -s /etc/passwd "$R/passwd.png"
ln -s /etc/passwd "$R/passwd"
ln -s "$T/outside/secret.png" "$R/out.png"
ln -s "$T/outside/sub" "$R/updir"
ln -s ../../outside/secret.png "$R/ab/rel.png"
mkdir -p "$R/dir.png"
echo "not an image" >"$R/notes.txt"
head -c $((1024 * 1024 + 1)) /dev/zero >"$R/big.png"
cp "$T/outside/secret.png" "$R/sp ace+%.png"

start_shard s0 --workers 1 --index "$T/cluster/shard-000" --shard 0 --shards 2
start_shard s1 --workers 1 --index "$T/cluster/shard-001" --shard 1 --shards 2
TOPO="${EP[s0]},${EP[s1]}"
start_broker broker "$TOPO" --image-root "$R" --deadline-ms 2000

# get PATH [curl flags]: status to stdout, body to $T/body, headers to $T/headers.
get() {
  local p=$1
  shift
  curl -s --path-as-is -o "$T/body" -D "$T/headers" -w '%{http_code}' "$@" "$URL$p" \
    || echo curl_failed
}
header() { grep -i "^$1:" "$T/headers" | head -n 1 | cut -d' ' -f2- | tr -d '\r'; }

# ---- 1. references and files -------------------------------------------------------------------
line2=$(sed -n 2p "$T/data/corpus.jsonl")
id2=$(grep -oE '^\{"id":[0-9]+' <<<"$line2" | tr -dc 0-9)
img2=$(grep -oE '"image":"[^"]*"' <<<"$line2" | cut -d'"' -f4)
[ "$img2" = "$(printf '%02x' $((id2 % 256)))/$id2.png" ] || fail "line 2's image is '$img2'"
[ "$(get "/v1/stickers/$id2")" = 200 ] || fail "sticker $id2: $(cat "$T/body")"
[ "$(jq -r .image "$T/body")" = "$img2" ] || fail "sticker $id2: image $(jq -c .image "$T/body")"
[ "$(jq -r .image_url "$T/body")" = "/images/$img2" ] || fail "sticker $id2: image_url $(jq -c .image_url "$T/body")"
[ "$(get "/images/$img2")" = 200 ] || fail "GET /images/$img2: $(cat "$T/body")"
cmp -s "$T/body" "$R/$img2" || fail "/images/$img2 is not the generated file byte for byte"
[ "$(header Content-Type)" = image/png ] || fail "Content-Type $(header Content-Type)"
header Cache-Control | grep -q max-age || fail "no Cache-Control max-age on an image"
[ "$(get "/images/sp%20ace%2B%25.png")" = 200 ] || fail "an encoded name: $(cat "$T/body")"
cmp -s "$T/body" "$T/outside/secret.png" || fail "the encoded name is not the file"
echo "  sticker $id2: image $img2 served byte for byte as image/png"

id1=$(sed -n 1p "$T/data/corpus.jsonl" | grep -oE '^\{"id":[0-9]+' | tr -dc 0-9)
[ "$(get "/v1/stickers/$id1")" = 200 ] || fail "sticker $id1"
[ "$(jq -r .image_url "$T/body")" = "https://img.example.com/s/1.png?x=1" ] \
  || fail "a URL image does not pass through: $(cat "$T/body")"
id3=$(sed -n 3p "$T/data/corpus.jsonl" | grep -oE '^\{"id":[0-9]+' | tr -dc 0-9)
[ "$(get "/v1/stickers/$id3")" = 200 ] || fail "sticker $id3"
u3=$(jq -r .image_url "$T/body")
[ "$u3" = "/images/zz/sp%20ace%2B%25%C3%A9.png" ] || fail "image_url of 'zz/sp ace+%é.png' is $u3"
[ "$(get "$u3")" = 200 ] && cmp -s "$T/body" "$T/data/images/zz/sp ace+%é.png" \
  || fail "$u3 is not the file"
id500=$(sed -n 500p "$T/data/corpus.jsonl" | grep -oE '^\{"id":[0-9]+' | tr -dc 0-9)
[ "$(get "/v1/stickers/$id500")" = 200 ] || fail "sticker $id500"
[ "$(jq 'has("image") or has("image_url")' "$T/body")" = false ] \
  || fail "a sticker without a picture has image keys: $(cat "$T/body")"

# explain=1: a query a pictured sticker answers, every hit's image_url as its corpus line says
q=""
for n in $(seq 2 300); do
  q=$(sed -n "${n}p" "$T/data/corpus.jsonl" | jq -r '.ocr | split("\n")[0]')
  [ -n "$q" ] && break
done
[ -n "$q" ] || fail "no pictured sticker with OCR text"
curl -s -G --data-urlencode "q=$q" --data-urlencode k=100 --data-urlencode explain=1 \
  "$URL/v1/search" >"$T/search.json" || fail "search '$q'"
with=$(jq '[.hits[] | select(.image_url)] | length' "$T/search.json")
[ "$with" -ge 1 ] || fail "no hit of '$q' has an image_url: $(head -c 400 "$T/search.json")"
jq -r '.hits[] | select(.image_url) | "\(.id) \(.image_url)"' "$T/search.json" >"$T/urls"
while read -r id url; do
  want=$(grep -F "{\"id\":$id," "$T/data/corpus.jsonl" | grep -oE '"image":"[^"]*"' | cut -d'"' -f4)
  case $want in http*) ;; *) want=/images/$want ;; esac
  [ "$url" = "$want" ] || fail "hit $id: image_url $url, corpus says $want"
done <"$T/urls"
echo "  explain=1: $with of $(jq '.hits | length' "$T/search.json") hits of '$q' carry the image_url of their corpus line"

# ---- 4. the persrv CLI (libpersrv) -------------------------------------------------------------
[ "$($P sticker --broker "$ZEP" --json "$id2" | jq -r .image)" = "$img2" ] \
  || fail "persrv sticker: no image for $id2"
[ "$($P sticker --broker "$ZEP" --json "$id500" | jq 'has("image")')" = false ] \
  || fail "persrv sticker: an image key for $id500, which has none"
$P sticker --broker "$ZEP" "$id2" | grep -qE "^  image +$img2\$" || fail "persrv sticker: text"
withimg=0
while IFS= read -r q; do
  $P search --broker "$ZEP" --json --k 50 -- "$q" | jq -c '.hits' >"$T/cli_b.json" \
    || fail "persrv search --broker '$q'"
  $P search --index "$T/single" --json --k 50 -- "$q" | jq -c '.hits' >"$T/cli_i.json" \
    || fail "persrv search --index '$q'"
  cmp -s "$T/cli_b.json" "$T/cli_i.json" || fail "'$q': --broker and --index hits differ"
  withimg=$((withimg + $(jq '[.[] | select(has("image"))] | length' "$T/cli_b.json")))
done < <(cut -f2 "$T/data/clicks.tsv" | sort -u | awk 'NR <= 10')
[ "$withimg" -gt 0 ] || fail "no hit of 10 searches shows an image"
echo "  persrv CLI: sticker and search show the picture ($withimg hits with one, --broker = --index)"

# ---- 2. refused paths -------------------------------------------------------------------------
# refused PATH STATUS: answered STATUS in the JSON error shape, and not with a linked file.
refused() {
  local st
  st=$(get "$1")
  [ "$st" = "$2" ] || fail "GET $1: status $st, want $2: $(head -c 200 "$T/body")"
  jq -e '.error.code and .error.message' "$T/body" >/dev/null \
    || fail "GET $1: not the JSON error shape: $(head -c 200 "$T/body")"
  ! grep -q "root:" "$T/body" || fail "GET $1 answered with /etc/passwd"
  ! cmp -s "$T/body" "$T/outside/secret.png" || fail "GET $1 answered with the file outside"
}
refused /images/passwd.png 403
refused /images/passwd 404 # not an image name: refused before any lookup
refused /images/out.png 403
refused /images/updir/secret.png 403
refused /images/ab/rel.png 403
refused /images/../corpus.jsonl 404
refused "/images/$(dirname "$img2")/../../corpus.jsonl" 404
refused "/images/%2e%2e/%2e%2e/outside/secret.png" 404
refused "/images/%2E%2E%2f%2E%2E%2foutside%2fsecret.png" 404
refused "/images/..%2f..%2foutside/secret.png" 404
refused "/images/.%2f$img2" 404
refused //images/x.png 404
refused "/images//etc/passwd" 404
refused "/images/%2fetc%2fpasswd" 404
refused "/images/$img2%00.png" 404
refused "/images/x%00/../$img2" 404
refused /images/dir.png 404
refused /images/notes.txt 404
refused /images/nosuch/1.png 404
refused /images/ 404
refused /images/big.png 413
echo "  links under the root 403; '..', %2e%2e, %2f, absolute, NUL, non-images 404; over the cap 413"

# ---- 3. no root; a bad root; the page ---------------------------------------------------------
start_broker plain "$TOPO" --deadline-ms 2000
refused "/images/$img2" 404
grep -q "image root" "$T/body" || fail "404 without a root does not say why: $(cat "$T/body")"
[ "$(get "/v1/stickers/$id2")" = 200 ] || fail "sticker $id2 from the broker without a root"
[ "$(jq -r .image_url "$T/body")" = "/images/$img2" ] || fail "image_url without a root"
[ "$(get /)" = 200 ] || fail "GET / is $(cat "$T/body")"
header Content-Type | grep -q '^text/html' || fail "GET / Content-Type $(header Content-Type)"
grep -q '<title>PerSRV' "$T/body" || fail "GET / is not the search page"
st=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/") || true
[ "$st" = 405 ] || fail "POST / is $st, want 405"
if "$BR" --shards "$TOPO" --http 127.0.0.1:0 --image-root "$T/data/corpus.jsonl" \
  2>"$T/badroot.log"; then
  fail "the broker started with a file as its image root"
fi
grep -q "image-root" "$T/badroot.log" || fail "the bad root is not named: $(cat "$T/badroot.log")"
echo "  no root: /images/ 404; a file as root: no start; GET / text/html, POST / 405"
stop plain
stop broker
stop s0
stop s1
echo "PASS"
