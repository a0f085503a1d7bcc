#!/usr/bin/env python3
"""OCI image archives without a registry or a container engine.

Owns the on-disk format of the images hack/images/build.sh makes: packing layer tars into an OCI
image-layout archive (`pack`), naming an archive another tool wrote (`name`), and checking an
archive's structure and digests (`check`). The archives are what `ctr images import FILE` reads;
the index carries the full reference in `io.containerd.image.name` (the annotation containerd's
importer prefers) and the tag in `org.opencontainers.image.ref.name`, as `ctr images export`
writes them, so that no `--base-name` is needed on import.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LAYER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"
ANN_CONTAINERD_NAME = "io.containerd.image.name"
ANN_REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20


def die(msg):
    print(f"oci.py: {msg}", file=sys.stderr)
    sys.exit(1)


def oci_tag(ref):
    """The tag part of a reference, as containerd's exporter puts in ref.name."""
    name = ref.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[colon + 1:] if colon > slash else ref


def digest_bytes(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Blobs:
    """A blobs/sha256 directory being filled, with the descriptors of what went in."""

    def __init__(self, root):
        self.dir = os.path.join(root, "blobs", "sha256")
        os.makedirs(self.dir, exist_ok=True)

    def put_bytes(self, data, media_type):
        dgst = digest_bytes(data)
        with open(os.path.join(self.dir, dgst[7:]), "wb") as f:
            f.write(data)
        return {"mediaType": media_type, "digest": dgst, "size": len(data)}

    def put_layer(self, tar_path, level):
        """Gzips a layer tar; returns (descriptor, diff_id of the uncompressed tar)."""
        tmp = os.path.join(self.dir, "incoming")
        diff = hashlib.sha256()
        with open(tar_path, "rb") as src, open(tmp, "wb") as raw:
            # mtime=0 and no file name: the same layer tar always gives the same blob.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level,
                               mtime=0) as gz:
                while chunk := src.read(CHUNK):
                    diff.update(chunk)
                    gz.write(chunk)
        comp = hashlib.sha256()
        with open(tmp, "rb") as f:
            while chunk := f.read(CHUNK):
                comp.update(chunk)
        size = os.path.getsize(tmp)
        os.replace(tmp, os.path.join(self.dir, comp.hexdigest()))
        return ({"mediaType": MT_LAYER_GZ, "digest": "sha256:" + comp.hexdigest(),
                 "size": size}, "sha256:" + diff.hexdigest())


def index_for(manifest_desc, ref):
    desc = dict(manifest_desc)
    desc["annotations"] = {ANN_CONTAINERD_NAME: ref, ANN_REF_NAME: oci_tag(ref)}
    return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [desc]}


def write_archive(root, out):
    """Tars an image-layout directory (oci-layout and index.json first) into `out` atomically."""
    tmp = out + ".partial"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        def add(rel):
            info = tar.gettarinfo(os.path.join(root, rel), arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            if info.isfile():
                with open(os.path.join(root, rel), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        add("oci-layout")
        add("index.json")
        add("blobs")
        add("blobs/sha256")
        for name in sorted(os.listdir(os.path.join(root, "blobs", "sha256"))):
            add(f"blobs/sha256/{name}")
    os.replace(tmp, out)


def cmd_pack(args):
    history = []
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.out))) as root:
        blobs = Blobs(root)
        layers, diff_ids = [], []
        for spec in args.layer:
            path, _, comment = spec.partition("=")
            desc, diff_id = blobs.put_layer(path, args.level)
            layers.append(desc)
            diff_ids.append(diff_id)
            history.append({"created": args.created, "created_by": comment or path})
        image_config = {"Env": args.env, "WorkingDir": args.workdir or "/"}
        if args.entrypoint:
            image_config["Entrypoint"] = json.loads(args.entrypoint)
        if args.cmd:
            image_config["Cmd"] = json.loads(args.cmd)
        if args.user:
            image_config["User"] = args.user
        if args.label:
            image_config["Labels"] = dict(kv.split("=", 1) for kv in args.label)
        config = {
            "created": args.created,
            "architecture": args.arch,
            "os": "linux",
            "config": image_config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        }
        config_desc = blobs.put_bytes(json.dumps(config, indent=None).encode(), MT_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc,
                    "layers": layers}
        manifest_desc = blobs.put_bytes(json.dumps(manifest).encode(), MT_MANIFEST)
        manifest_desc["platform"] = {"architecture": args.arch, "os": "linux"}
        with open(os.path.join(root, "oci-layout"), "w") as f:
            json.dump({"imageLayoutVersion": "1.0.0"}, f)
        with open(os.path.join(root, "index.json"), "w") as f:
            json.dump(index_for(manifest_desc, args.name), f)
        write_archive(root, args.out)
    print(f"{args.out}: {args.name} manifest {manifest_desc['digest']}")


def cmd_name(args):
    """Rewrites the index of a single-image archive (e.g. buildah's oci-archive) to name it."""
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.out))) as root:
        with tarfile.open(args.archive) as tar:
            # The archive is one our own build just wrote; the "data" filter (Python >= 3.11.4)
            # still refuses links out of the tree if it is there.
            try:
                tar.extractall(root, filter="data")
            except TypeError:
                tar.extractall(root)
        with open(os.path.join(root, "index.json")) as f:
            index = json.load(f)
        if len(index.get("manifests", [])) != 1:
            die(f"{args.archive}: expected one manifest in index.json, "
                f"found {len(index.get('manifests', []))}")
        desc = {k: v for k, v in index["manifests"][0].items() if k != "annotations"}
        with open(os.path.join(root, "index.json"), "w") as f:
            json.dump(index_for(desc, args.name), f)
        write_archive(root, args.out)
    print(f"{args.out}: {args.name} manifest {desc['digest']}")


def cmd_check(args):
    """Checks that every descriptor reachable from index.json names a blob of that size and
    digest, and that the config's diff_ids are the digests of the uncompressed layers."""
    with tarfile.open(args.archive) as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers()}

        def read(name):
            m = members.get(name)
            if m is None:
                die(f"{args.archive}: missing {name}")
            return tar.extractfile(m).read()

        def blob(desc, expect_types):
            if desc.get("mediaType") not in expect_types:
                die(f"{args.archive}: {desc.get('digest')}: media type {desc.get('mediaType')} "
                    f"not one of {expect_types}")
            algo, _, hexd = desc["digest"].partition(":")
            f = tar.extractfile(members[f"blobs/{algo}/{hexd}"])
            h, size = hashlib.sha256(), 0
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
            if "sha256:" + h.hexdigest() != desc["digest"] or size != desc["size"]:
                die(f"{args.archive}: blob {desc['digest']} has digest sha256:{h.hexdigest()} "
                    f"size {size}, descriptor says size {desc['size']}")

        layout = json.loads(read("oci-layout"))
        if layout.get("imageLayoutVersion") != "1.0.0":
            die(f"{args.archive}: oci-layout {layout}")
        index = json.loads(read("index.json"))
        if len(index["manifests"]) != 1:
            die(f"{args.archive}: {len(index['manifests'])} manifests in index.json")
        mdesc = index["manifests"][0]
        ann = mdesc.get("annotations", {})
        name = ann.get(ANN_CONTAINERD_NAME)
        if not name:
            die(f"{args.archive}: index.json has no {ANN_CONTAINERD_NAME}")
        if args.name and name != args.name:
            die(f"{args.archive}: named {name}, expected {args.name}")
        if ann.get(ANN_REF_NAME) != oci_tag(name):
            die(f"{args.archive}: {ANN_REF_NAME}={ann.get(ANN_REF_NAME)} for {name}")
        blob(mdesc, [MT_MANIFEST, MT_DOCKER_MANIFEST])
        algo, _, hexd = mdesc["digest"].partition(":")
        manifest = json.loads(read(f"blobs/{algo}/{hexd}"))
        blob(manifest["config"], [MT_CONFIG, "application/vnd.docker.container.image.v1+json"])
        algo, _, hexd = manifest["config"]["digest"].partition(":")
        config = json.loads(read(f"blobs/{algo}/{hexd}"))
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(manifest["layers"]):
            die(f"{args.archive}: {len(manifest['layers'])} layers, {len(diff_ids)} diff_ids")
        unpacked = 0
        for layer, diff_id in zip(manifest["layers"], diff_ids):
            blob(layer, [MT_LAYER_GZ, MT_LAYER, MT_DOCKER_LAYER_GZ])
            algo, _, hexd = layer["digest"].partition(":")
            f = tar.extractfile(members[f"blobs/{algo}/{hexd}"])
            if layer["mediaType"] != MT_LAYER:
                f = gzip.GzipFile(fileobj=f)
            h = hashlib.sha256()
            while chunk := f.read(CHUNK):
                h.update(chunk)
                unpacked += len(chunk)
            if "sha256:" + h.hexdigest() != diff_id:
                die(f"{args.archive}: layer {layer['digest']} unpacks to sha256:{h.hexdigest()}, "
                    f"config says {diff_id}")
        cfg = config.get("config", {})
        print(f"{args.archive}: ok: {name} {config['os']}/{config['architecture']} "
              f"{len(diff_ids)} layer(s), {unpacked / 1e6:.1f} MB unpacked, "
              f"Entrypoint={json.dumps(cfg.get('Entrypoint'))} Cmd={json.dumps(cfg.get('Cmd'))}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    pk = sub.add_parser("pack", help="pack layer tars into an OCI archive")
    pk.add_argument("--out", required=True)
    pk.add_argument("--name", required=True, help="full reference, e.g. registry.k8s.io/x:1")
    pk.add_argument("--layer", action="append", required=True,
                    help="TAR[=history comment], bottom layer first")
    pk.add_argument("--entrypoint", help="JSON list")
    pk.add_argument("--cmd", help="JSON list")
    pk.add_argument("--env", action="append",
                    default=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    pk.add_argument("--label", action="append", help="KEY=VALUE")
    pk.add_argument("--workdir")
    pk.add_argument("--user", help="UID:GID the entrypoint runs as")
    pk.add_argument("--arch", default="amd64")
    pk.add_argument("--created", default="1970-01-01T00:00:00Z")
    pk.add_argument("--level", type=int, default=6, help="gzip level")
    nm = sub.add_parser("name", help="name the single image of an OCI archive")
    nm.add_argument("archive")
    nm.add_argument("--name", required=True)
    nm.add_argument("--out", required=True)
    ck = sub.add_parser("check", help="check an OCI archive's structure and digests")
    ck.add_argument("archive")
    ck.add_argument("--name", help="expected io.containerd.image.name")
    args = p.parse_args()
    {"pack": cmd_pack, "name": cmd_name, "check": cmd_check}[args.action](args)


if __name__ == "__main__":
    main()
