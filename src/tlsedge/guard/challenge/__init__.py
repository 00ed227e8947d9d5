"""The proof-of-work bot challenge: signed stateless tokens (pow), the pass cookie (cookies) and the pages (page).

Everything here is sans-IO: functions take the keys, the client address, the clock and the submitted text, and
return tokens, cookies, verdicts or page bytes. The data plane decides when to challenge and does the I/O.
"""
