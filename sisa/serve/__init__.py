"""A warm server that keeps torch imported and answers forwarded deletions over a local socket.

:mod:`sisa.serve.client` finds this user's server of a workspace and forwards a command line
(light: it imports no torch); :mod:`sisa.serve.server` serves them, each run by the function
its caller passes in (the command line's), so this package never imports :mod:`sisa.cli`.
"""
