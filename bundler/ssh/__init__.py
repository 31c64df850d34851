"""OpenSSH for airlock: wire encoding, key files, ssh-agent, keys, SSHSIG, the trust decision."""
