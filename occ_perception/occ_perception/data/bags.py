"""rosbag2 (MCAP) writing and reading with ``rosbags``, without ROS.

Bags are written with the typestore of :func:`occ_perception.messages.rosbags_typestore`
(ROS 2 Humble or Jazzy plus our messages), so every connection carries its
full message definition (the MCAP schema, ``ros2msg`` encoding) and
``ros2 bag``, Foxglove and the ``mcap`` tools decode every topic.

Format version per distro: Humble's rosbag2 parses the QoS profiles in a
bag's metadata as integer enums (rosbag2 metadata version 8 and below),
Jazzy's as names (version 9, which it writes itself) and still reads both.
So ``distro='humble'`` writes version 8 and ``'jazzy'`` version 9; rosbags
renders the profiles in the matching form.

Latching: ``ros2 bag play`` offers each topic with the QoS recorded in the
bag; a topic written with :data:`LATCHED_QOS` (reliable, transient local,
keep last 1) is replayed latched, as ``/tf_static`` must be.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

from ..messages import DISTROS, MessageTypes, rosbags_typestore

__all__ = [
    'BAG_READ_ERRORS',
    'BAG_VERSIONS',
    'DEFAULT_QOS',
    'LATCHED_QOS',
    'BagError',
    'BagMessage',
    'BagWriter',
    'decode_message',
    'read_bag',
]

# rosbag2 metadata version written for each distro (see the module docstring)
BAG_VERSIONS: dict[str, Literal[8, 9]] = {'humble': 8, 'jazzy': 9}

_ZERO = QosTime(0, 0)
# what rclpy offers by default (the 'default' profile: reliable, volatile, keep last 10)
DEFAULT_QOS = Qos(
    QosHistory.KEEP_LAST,
    10,
    QosReliability.RELIABLE,
    QosDurability.VOLATILE,
    _ZERO,
    _ZERO,
    QosLiveliness.AUTOMATIC,
    _ZERO,
    False,
)
# what tf2's static broadcaster offers: reliable, transient local, keep last 1
LATCHED_QOS = Qos(
    QosHistory.KEEP_LAST,
    1,
    QosReliability.RELIABLE,
    QosDurability.TRANSIENT_LOCAL,
    _ZERO,
    _ZERO,
    QosLiveliness.AUTOMATIC,
    _ZERO,
    False,
)


class BagError(ValueError):
    """A bag cannot be written (exists, unknown topic, bad distro) or read (missing, unexpected content)."""


def _read_errors() -> tuple[type[BaseException], ...]:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag2 import ReaderError
    from rosbags.serde import SerdeError
    from rosbags.typesys import TypesysError

    try:
        from zstandard import ZstdError  # a damaged zstd chunk of a compressed MCAP
    except ImportError:  # rosbags without MCAP compression support
        extra: tuple[type[BaseException], ...] = ()
    else:
        extra = (ZstdError,)
    return extra + (
        AnyReaderError,
        ReaderError,
        SerdeError,
        TypesysError,
        OSError,
        EOFError,
        ValueError,  # UnicodeDecodeError of a damaged string
        KeyError,  # a metadata.yaml or a QoS profile without an expected key
        IndexError,
        struct.error,
        OverflowError,  # a damaged length field beyond what a read() accepts
        MemoryError,  # a damaged length field asks rosbags for gigabytes
    )


BAG_READ_ERRORS: tuple[type[BaseException], ...] = _read_errors()
"""What rosbags (and the libraries under it) raise on a truncated or damaged bag or CDR message; the readers here
turn them into :class:`BagError`."""


def decode_message(deserialize: Callable[[Any, str], Any], raw: Any, msgtype: str, where: str) -> Any:
    """Deserialise one CDR message, turning rosbags' errors on damaged bytes into a :class:`BagError`.

    Args:
        deserialize: e.g. ``AnyReader.deserialize`` or a typestore's ``deserialize_cdr``.
        raw: the serialised bytes. msgtype: the full type name. where: the topic (or file) for the message.

    Raises:
        BagError: naming ``where`` and the type: the bytes are not a valid CDR ``msgtype``.
    """
    try:
        return deserialize(raw, msgtype)
    except BAG_READ_ERRORS as err:
        raise BagError(f'{where}: cannot decode {len(raw)} bytes as {msgtype}: {type(err).__name__}: {err}') from err


class BagWriter:
    """A rosbag2 MCAP writer that serialises messages of the distro's typestore.

    Use as a context manager; the bag folder must not exist yet.

    Args:
        path: the bag folder to create (holds ``<name>.mcap`` and ``metadata.yaml``).
        distro: ``'humble'`` or ``'jazzy'`` (typestore and format version).
        compress: zstd-compress the MCAP chunks (read natively by rosbag2's MCAP
            plugin, Foxglove and the mcap tools).

    Raises:
        BagError: unknown distro or the folder exists.
    """

    def __init__(self, path: Path | str, distro: str = 'jazzy', compress: bool = True) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        if distro not in DISTROS:
            raise BagError(f'BagWriter: distro must be one of {DISTROS}, got {distro!r}')
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path}: the bag folder exists already; remove it or choose another --out')
        self.distro = distro
        self.typestore = rosbags_typestore(distro)
        self.types = MessageTypes.rosbags(distro)
        self._writer = Writer(self.path, version=BAG_VERSIONS[distro], storage_plugin=StoragePlugin.MCAP)
        if compress:
            from rosbags.rosbag2 import CompressionFormat, CompressionMode

            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._connections: dict[str, Any] = {}
        self.counts: dict[str, int] = {}

    def __enter__(self) -> BagWriter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self._writer.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._writer.__exit__(exc_type, exc, tb)

    def add_topic(
        self, topic: str, msgtype: str, latched: bool = False, msgdef: str | None = None, rihs01: str | None = None
    ) -> None:
        """Declare ``topic`` (absolute name) of ``msgtype`` (full name, e.g. ``sensor_msgs/msg/CameraInfo``).

        Args:
            latched: offer the topic with :data:`LATCHED_QOS` (transient local).
            msgdef, rihs01: the message definition (``ros2msg`` or ``ros2idl`` text) and its RIHS01 hash to
                store instead of the typestore's, e.g. those of another bag whose raw CDR is copied with
                :meth:`write_raw`; both or neither.

        Raises:
            BagError: the topic was declared before, the name is not absolute, or the type is unknown.
        """
        if not topic.startswith('/'):
            raise BagError(f'BagWriter.add_topic: topic names in a bag are absolute, got {topic!r}')
        if topic in self._connections:
            raise BagError(f'BagWriter.add_topic: topic {topic!r} was added already')
        qos = LATCHED_QOS if latched else DEFAULT_QOS
        if msgdef and rihs01:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, msgdef=msgdef, rihs01=rihs01, offered_qos_profiles=[qos]
            )
        else:
            if msgtype not in self.typestore.types:
                raise BagError(f'BagWriter.add_topic: {msgtype!r} is not a message type of the {self.distro} typestore')
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self.typestore, offered_qos_profiles=[qos]
            )
        self.counts[topic] = 0

    def write_raw(self, topic: str, stamp_ns: int, data: bytes | memoryview) -> None:
        """Write already serialised CDR ``data`` at log time ``stamp_ns`` [ns] (e.g. copied from another bag).

        Raises:
            BagError: the topic was not added.
        """
        conn = self._connections.get(topic)
        if conn is None:
            raise BagError(f'BagWriter.write_raw: topic {topic!r} was not added; have {sorted(self._connections)}')
        self._writer.write(conn, int(stamp_ns), data)
        self.counts[topic] += 1

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None:
        """Serialise ``msg`` (a typestore message) to CDR and write it at log time ``stamp_ns`` [ns].

        Raises:
            BagError: the topic was not added.
        """
        conn = self._connections.get(topic)
        if conn is None:
            raise BagError(f'BagWriter.write: topic {topic!r} was not added; have {sorted(self._connections)}')
        self._writer.write(conn, int(stamp_ns), self.typestore.serialize_cdr(msg, conn.msgtype))
        self.counts[topic] += 1


@dataclass(frozen=True)
class BagMessage:
    """One decoded bag message: topic, full type name, log time [ns] and the typestore message."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: Any


def read_bag(path: Path | str, topics: Sequence[str] | None = None, distro: str = 'jazzy') -> Iterator[BagMessage]:
    """Decode the messages of a rosbag2 folder (or rosbag1 file) in log-time order.

    Message definitions stored in the bag are used; the ``distro`` typestore
    (with our messages) decodes bags written without them.

    Args:
        topics: only these topics (absolute names); all when None.

    Raises:
        BagError: the bag does not exist or cannot be opened, a requested topic is not in it, or the bag is
            truncated or damaged (:data:`BAG_READ_ERRORS`; the messages before the damage were yielded).
    """
    from rosbags.highlevel import AnyReader

    path = Path(path)
    if not path.exists():
        raise BagError(f'{path}: no such bag')
    try:
        reader = AnyReader([path], default_typestore=rosbags_typestore(distro))
        reader.open()
    except BAG_READ_ERRORS as err:
        raise BagError(f'{path}: cannot open as a rosbag: {type(err).__name__}: {err}') from err
    try:
        present = {c.topic for c in reader.connections}
        if topics is not None:
            missing = sorted(set(topics) - present)
            if missing:
                raise BagError(f'{path}: topics {missing} are not in the bag; it has {sorted(present)}')
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        stream = reader.messages(connections=conns)
        count = 0
        while True:
            try:
                item = next(stream, None)
            except BAG_READ_ERRORS as err:
                raise BagError(
                    f'{path}: truncated or damaged after {count} messages: {type(err).__name__}: {err}'
                ) from err
            if item is None:
                return
            conn, timestamp, raw = item
            msg = decode_message(reader.deserialize, raw, conn.msgtype, f'{path} {conn.topic}')
            count += 1
            yield BagMessage(conn.topic, conn.msgtype, int(timestamp), msg)
    finally:
        try:
            reader.close()
        except BAG_READ_ERRORS:
            pass  # a damaged file may fail again while closing; the error that matters was raised above
