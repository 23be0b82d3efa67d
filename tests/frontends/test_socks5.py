"""success_reply() (the fast IPv4 path) answers exactly what encode_reply() does."""

import pytest

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import from_sockaddr
from gproxy.frontends.socks5 import success_reply


@pytest.mark.parametrize(
    "sockname",
    [("127.0.0.1", 40000), ("10.1.2.3", 1), ("0.0.0.0", 65535), ("::1", 443, 0, 0), ("::ffff:1.2.3.4", 80, 0, 0)],
)
def test_same_bytes_as_encode_reply(sockname):
    assert success_reply(sockname) == socks5.encode_reply(ReplyCode.SUCCEEDED, from_sockaddr(sockname))


def test_mapped_ipv6_goes_out_as_ipv4():
    assert success_reply(("::ffff:1.2.3.4", 80, 0, 0))[3] == 0x01
