# The tollgate image: one `tollgate` command for every role (operator, charging, api, migrate).
#
# Build it with `make image` (hack/build-image.sh): the wheels of tollgate and of every
# dependency are made on the host into dist/wheels and installed here with
# `pip install --no-index`, so the build needs neither network nor compiler. BASE_IMAGE is any
# Debian-like image with python3; the wheels must match its Python version and architecture
# (the script takes care of it). Without a reachable registry, the script makes a base with
# debootstrap (see hack/build-image.sh).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS install
COPY dist/wheels/ /wheels/
# pip runs from its wheel and is not installed: the runtime venv holds tollgate and its
# dependencies only. Bytecode is compiled now, since the root filesystem is read-only at run time.
RUN set -eux; \
    python3 -m venv --without-pip /opt/tollgate; \
    pip_wheel="$(ls /wheels/pip-*.whl)"; \
    /opt/tollgate/bin/python3 "${pip_wheel}/pip" install --no-index --find-links /wheels \
        --no-cache-dir --disable-pip-version-check --compile --only-binary=:all: tollgate; \
    /opt/tollgate/bin/tollgate --help > /dev/null

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="tollgate" \
      org.opencontainers.image.description="Cloud-native BSS for telecom operators" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed non-root UID/GID (65532), matching the charts' runAsUser; a passwd entry, because
# getpass and some libraries look the user up.
RUN set -eux; \
    groupadd --system --gid 65532 tollgate; \
    useradd --system --uid 65532 --gid 65532 --home-dir /home/tollgate --create-home \
        --shell /usr/sbin/nologin tollgate
COPY --from=install /opt/tollgate /opt/tollgate
ENV PATH=/opt/tollgate/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /home/tollgate
EXPOSE 8080
ENTRYPOINT ["tollgate"]
CMD ["--help"]
