#!/usr/bin/env python3
"""Writes a one-layer OCI image archive that `ctr images import` loads under its full name.

usage: oci-archive.py OUT.tar REF ENTRYPOINT SRC:DST[:MODE]...
Only used for the fallback pause image; the project's images come from hack/images/.
"""
import hashlib, io, json, sys, tarfile


def blob(tar, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest[7:])
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def main(out, ref, entrypoint, *files):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as lt:
        for spec in files:
            src, dst, *mode = spec.split(":")
            info = lt.gettarinfo(src, dst.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = int(mode[0], 8) if mode else info.mode
            with open(src, "rb") as f:
                lt.addfile(info, f)
    layer = layer.getvalue()
    platform = {"os": "linux", "architecture": "amd64"}
    with tarfile.open(out, "w") as tar:
        ldesc = blob(tar, layer)
        config = dict(platform, config={"Entrypoint": [entrypoint]},
                      rootfs={"type": "layers", "diff_ids": [ldesc["digest"]]})
        cdesc = blob(tar, json.dumps(config).encode())
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": dict(cdesc, mediaType="application/vnd.oci.image.config.v1+json"),
                    "layers": [dict(ldesc, mediaType="application/vnd.oci.image.layer.v1.tar")]}
        mdesc = blob(tar, json.dumps(manifest).encode())
        index = {"schemaVersion": 2, "manifests": [dict(
            mdesc, mediaType=manifest["mediaType"], platform=platform,
            annotations={"io.containerd.image.name": ref,
                         "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]})]}
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                           ("index.json", json.dumps(index).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
