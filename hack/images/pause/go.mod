module nftpol/hack/images/pause

go 1.26
