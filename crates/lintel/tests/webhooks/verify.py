"""Verifies one webhook delivery with the reference Standard Webhooks library.

Reads {"secret", "headers", "body"} as JSON on standard input; exits 0 and prints
"ok" when the signature verifies, non-zero with the library's error otherwise.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook

d = json.load(sys.stdin)
Webhook(d["secret"]).verify(d["body"], d["headers"])
print("ok")
