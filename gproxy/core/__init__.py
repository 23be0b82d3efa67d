"""What every connection uses and nothing that knows a front end: addresses, errors, config,
sessions, streams, rules, dialing, upstreams, the relay. Imports codec/ and nothing above.
"""
