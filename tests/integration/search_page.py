#!/usr/bin/env python3
"""search_page.py — drive the broker's search page (GET /) in headless Chromium over the
DevTools protocol, with the Python standard library only (a minimal WebSocket client: no
npm, no network).

usage: search_page.py DEVTOOLS_DIR URL QUERY USER SCREENSHOT.png

DEVTOOLS_DIR is the --user-data-dir of a Chromium started with --remote-debugging-port=0
(it writes the port it picked to DevToolsActivePort there); the caller starts and stops
Chromium by its pid. Steps, each asserted on the page's DOM (exit 1 with the reason on the
first failure):
  1. load URL, the search page: title, query box, user box with the demo users' datalist;
  2. type QUERY and USER (Input.insertText into the focused boxes), press Search: hits
     appear, every picture that is there has loaded (naturalWidth > 0, 96 px) and at least
     one hit has one; hits without one show the fallback box with their id;
  3. open the first hit's score breakdown: relevance, utility, recall, preference,
     centroid and score, the score equal to the one the card shows;
  4. press "click" on the last hit: the page shows the stored click (seq, the user), searches
     again and marks every hit with its rank change; the clicked hit's rank does not fall
     (its own embedding is now the user's centroid: the largest preference there is);
  5. save a screenshot (PNG) to SCREENSHOT.png.
Prints "clicked=<sticker id> old_rank=<r> new_rank=<r>" for the caller to check the store.
"""
import base64
import http.client
import json
import os
import socket
import struct
import sys
import time


def fail(msg):
    print("search_page: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


class DevTools:
    """One WebSocket connection to a page target; send() returns the command's result."""

    def __init__(self, host, port, path):
        self.sock = socket.create_connection((host, port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                fail("DevTools closed the connection during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            fail("DevTools refused the WebSocket: " + head.decode(errors="replace"))
        self.next_id = 0

    def _recv_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                fail("DevTools closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _recv_message(self):
        data = b""
        while True:
            b0, b1 = self._recv_exact(2)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b1 & 0x80 else None
            payload = self._recv_exact(n)
            if mask:
                payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
            if op == 8:
                fail("DevTools closed the WebSocket")
            if op == 9:  # ping: answer, keep reading
                self._send_frame(10, payload)
                continue
            data += payload
            if b0 & 0x80:
                return data

    def _send_frame(self, op, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", 0x80 | op, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack(">BBH", 0x80 | op, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | op, 0x80 | 127, n)
        self.sock.sendall(head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))

    def send(self, method, **params):
        self.next_id += 1
        mid = self.next_id
        self._send_frame(1, json.dumps({"id": mid, "method": method, "params": params}).encode())
        while True:
            msg = json.loads(self._recv_message())
            if msg.get("id") == mid:
                if "error" in msg:
                    fail(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expr):
        """The value of a JavaScript expression (awaited if a promise), as JSON."""
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            fail(f"JavaScript error in {expr!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.js(expr)
            if v:
                return v
            time.sleep(0.1)
        fail(f"timed out after {timeout:.0f} s waiting for {what}")


def connect(devtools_dir):
    port_file = os.path.join(devtools_dir, "DevToolsActivePort")
    deadline = time.monotonic() + 60
    while not os.path.exists(port_file) or os.path.getsize(port_file) == 0:
        if time.monotonic() > deadline:
            fail("Chromium wrote no DevToolsActivePort in 60 s")
        time.sleep(0.1)
    port = int(open(port_file).read().split()[0])
    for _ in range(100):  # the page target appears shortly after the port
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/json/list")
        targets = json.loads(c.getresponse().read())
        pages = [t for t in targets if t.get("type") == "page" and "webSocketDebuggerUrl" in t]
        if pages:
            path = "/" + pages[0]["webSocketDebuggerUrl"].split("/", 3)[3]
            return DevTools("127.0.0.1", port, path)
        time.sleep(0.1)
    fail("Chromium has no page target")


def main():
    if len(sys.argv) != 6:
        fail("usage: search_page.py DEVTOOLS_DIR URL QUERY USER SCREENSHOT.png")
    devtools_dir, url, query, user, shot = sys.argv[1:]
    dt = connect(devtools_dir)
    dt.send("Page.enable")
    dt.send("Runtime.enable")
    dt.send("Emulation.setDeviceMetricsOverride", width=1280, height=1000, deviceScaleFactor=1,
            mobile=False)

    # 1. the page
    dt.send("Page.navigate", url=url + "/")
    dt.wait("document.readyState === 'complete' && !!document.getElementById('q')",
            "the search page to load")
    title = dt.js("document.title")
    if "PerSRV" not in title:
        fail(f"the title is {title!r}")
    users = dt.js("[...document.querySelectorAll('#users option')].map(o => o.value)")
    if "u01" not in users:
        fail(f"the user list is {users!r}")

    # 2. type, search, pictures
    dt.js("document.getElementById('q').focus()")
    dt.send("Input.insertText", text=query)
    dt.js("document.getElementById('user').focus()")
    dt.send("Input.insertText", text=user)
    if dt.js("document.getElementById('q').value") != query:
        fail("the typed query is not in the box")
    dt.js("document.getElementById('go').click()")
    n = dt.wait("document.querySelectorAll('#hits .hit').length", "hits")
    dt.wait("[...document.querySelectorAll('#hits img.pic')].every(i => i.complete)",
            "every picture to finish loading")
    pics = dt.js("[...document.querySelectorAll('#hits img.pic')]"
                 ".map(i => [i.naturalWidth, i.naturalHeight, i.getAttribute('src')])")
    boxes = dt.js("[...document.querySelectorAll('#hits .hit')].filter(h => h.querySelector('.box'))"
                  ".map(h => [h.dataset.id, h.querySelector('.box').textContent])")
    if not pics:
        fail(f"none of the {n} hits shows a picture")
    for w, h, src in pics:
        if w <= 0 or (w, h) != (96, 96):
            fail(f"picture {src} did not load (naturalWidth {w}, height {h})")
        if not src.startswith("/images/"):
            fail(f"picture src {src} is not under /images/")
    for hid, text in boxes:
        if hid != text:
            fail(f"the fallback box of {hid} says {text!r}")
    if len(pics) + len(boxes) != n:
        fail(f"{n} hits, {len(pics)} pictures and {len(boxes)} boxes")
    status = dt.js("document.getElementById('status').textContent")
    if f"{n} hits" not in status:
        fail(f"the status line says {status!r}")
    print(f"search_page: {n} hits of {query!r}: {len(pics)} pictures loaded, "
          f"{len(boxes)} fallback boxes")

    # 3. a breakdown
    dt.js("document.querySelector('#hits .hit details summary').click()")
    dt.wait("document.querySelector('#hits .hit details').open", "the breakdown to open")
    rows = dt.js("[...document.querySelector('#hits .hit details').querySelectorAll('tr')]"
                 ".map(r => [r.dataset.k, r.cells[1].textContent])")
    keys = [k for k, _ in rows]
    if keys != ["relevance", "utility", "recall", "preference", "centroid", "score"]:
        fail(f"the breakdown rows are {keys!r}")
    shown = dt.js("document.querySelector('#hits .hit .score').textContent")
    if shown != "score " + dict(rows)["score"]:
        fail(f"the card says {shown!r}, the breakdown {dict(rows)['score']!r}")
    for k, v in rows:
        try:
            float(v)
        except ValueError:
            fail(f"breakdown {k} is {v!r}")
    vis = dt.js("getComputedStyle(document.querySelector('#hits .hit details table')).display")
    if vis == "none":
        fail("the open breakdown is not displayed")

    # 4. click the last hit
    last = dt.js("(() => { const h = [...document.querySelectorAll('#hits .hit')].pop();"
                 " return [h.dataset.id, +h.dataset.rank]; })()")
    cid, old_rank = last
    dt.js(f"document.querySelector('#hits .hit[data-id=\"{cid}\"] .clickbtn').click()")
    msg = dt.wait("(() => { const m = document.getElementById('clickmsg');"
                  " return m.className === 'ok' && m.textContent.includes('after:')"
                  " ? m.textContent : ''; })()", "the stored click and the new search")
    if f"click stored for {user}" not in msg or cid not in msg or "seq" not in msg:
        fail(f"the click message is {msg!r}")
    err = dt.js("document.getElementById('clickmsg').classList.contains('error')")
    if err:
        fail(f"the click failed: {msg!r}")
    deltas = dt.js("[...document.querySelectorAll('#hits .hit')]"
                   ".map(h => [h.dataset.id, +h.dataset.rank, !!h.querySelector('.delta')])")
    if not deltas or not all(d for _, _, d in deltas):
        fail("after the click not every hit shows its rank change")
    new_rank = next((r for i, r, _ in deltas if i == cid), None)
    if new_rank is None:
        fail(f"the clicked sticker {cid} left the hits")
    if new_rank > old_rank:
        fail(f"the clicked sticker fell from {old_rank} to {new_rank}")
    if not dt.js(f"document.querySelector('#hits .hit[data-id=\"{cid}\"]').classList"
                 ".contains('clicked')"):
        fail("the clicked hit is not marked")
    status = dt.js("document.getElementById('status').textContent")
    if f"personalized for {user}" not in status:
        fail(f"after the click the search is not personalized: {status!r}")
    print(f"search_page: {msg}")

    # 5. the screenshot, with the clicked hit's breakdown open
    dt.js(f"document.querySelector('#hits .hit[data-id=\"{cid}\"] details').open = true")
    dt.js("window.scrollTo(0, 0)")
    png = base64.b64decode(dt.send("Page.captureScreenshot", format="png")["data"])
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        fail("the screenshot is not a PNG")
    with open(shot, "wb") as f:
        f.write(png)
    print(f"clicked={cid} old_rank={old_rank} new_rank={new_rank}")


if __name__ == "__main__":
    main()
