"""The daemon's optional read-only web page (``[dashboard]``), for node and CPM alike.

- :mod:`.views`   the page's JSON from the daemon's status and its home's files (curve, audit log).
- :mod:`.server`  the service (on :mod:`knexa_node.httpd`): routes, token, refusal of non-loopback addresses
  unless allowed.
- ``page.html``   the page itself: no external assets, polls ``/api/dashboard`` every 2 s.
"""
