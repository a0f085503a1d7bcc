module local/nftpol-cluster/pause

go 1.22
