"""Real tpm2-tools artifacts from a swtpm, for tests that need genuine TPM output but no TPM.

Recorded from swtpm 0.7.1 and tpm2-tools 5.4:
`tpm2_createak -G ecc -g sha256 -s ecdsa -u ak.pub -n ak.name` under an RSA EK, then
`tpm2_quote -l sha256:0,1,2,3,4,5,6,7 -q 0102030405060708 -g sha256` (all eight PCRs zero).
tests/test_quote_swtpm.py makes fresh ones of the same kind against a live swtpm.
"""

SWTPM_AK = bytes.fromhex(
    "00580023000b00050072000000100018000b000300100020ead7df895cb87f93c696a4f97466802c0f61ab90cd"
    "f337c9ebcb14a4babf15920020734fde61d6e82b169eb93163a8b10c65facfc1a3249171a72c5ab68d7161f720"
)
SWTPM_AK_NAME = bytes.fromhex("000bedf0e3dde10b054ff00cb4202680ce6e2db43e68f8a2153825887a748edd5a40")
SWTPM_QUOTE = bytes.fromhex(
    "ff54434780180022000b975b0084fe70492045470bb271fe2ff83f528dc5b89145244598c412890a33e8000801"
    "020304050607080000000000008801000000020000000001201910230016363600000001000b03ff0000002053"
    "41e6b2646979a70e57653007a1f310169421ec9bdd9f1a5648f75ade005af1"
)
SWTPM_SIG = bytes.fromhex(
    "0018000b0020f2bfac1c1257a68015c9b2bb6b700bab20a1869a9d4349fc8ff80d1744249f4e00203d369b3721"
    "baaae592f8c63696522bdfec8955bc19b7225cfd0f001abc0984c5"
)
SWTPM_NONCE = bytes.fromhex("0102030405060708")
