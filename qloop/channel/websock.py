class QIOChannelWebsock: pass
