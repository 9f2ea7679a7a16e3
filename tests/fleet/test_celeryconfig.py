"""Celery settings: the defaults a user gets are the ones the failure model relies on
(at-least-once delivery, one chunk per process, no pickle, timeouts from settings)."""

from __future__ import annotations

import logging

import pytest

from embedfleet.fleet.celeryconfig import BROKER_HEARTBEAT_SECONDS, celery_config, use_broker_config
from embedfleet.fleet.queues import AMQP_QUEUES, EMBED_QUEUE, QUEUES, ROUTES
from embedfleet.settings import Settings

# Celery's own worker_proc_alive_timeout: a pool child not up by then is killed.
CELERY_PROC_ALIVE_DEFAULT = 4.0


def test_delivery_is_at_least_once() -> None:
    """Acks after the task ran and re-queues a task whose process died: a killed worker loses no chunk."""
    conf = celery_config(Settings())
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True


def test_each_process_holds_one_chunk() -> None:
    """Prefetch 1: a dead worker strands one chunk per process, and a slow one hoards nothing."""
    assert celery_config(Settings())["worker_prefetch_multiplier"] == 1


def test_no_pickle_and_no_result_backend() -> None:
    """Messages are msgpack (json accepted), never pickle; results go to SQL, not a backend."""
    conf = celery_config(Settings())
    assert conf["task_serializer"] == conf["result_serializer"] == "msgpack"
    assert "pickle" not in conf["accept_content"] and set(conf["accept_content"]) == {"msgpack", "json"}
    assert conf["task_ignore_result"] is True and conf["result_backend"] is None


def test_broker_and_routes_come_from_settings_and_queues() -> None:
    """broker_url is the settings'; queues and routes are the ones embedfleet/fleet/queues.py declares."""
    conf = celery_config(Settings(broker_url="redis://broker.example:6380/4"))
    assert conf["broker_url"] == "redis://broker.example:6380/4"
    assert conf["task_queues"] is QUEUES and conf["task_routes"] is ROUTES
    assert conf["task_default_queue"] == EMBED_QUEUE


@pytest.mark.parametrize(("timeout", "interval"), [(3600, 10), (100, 10), (50, 5), (15, 1), (5, 1), (1, 1)])
def test_visibility_timeout_and_its_restore_interval(timeout: int, interval: int) -> None:
    """Redis re-delivers after settings.visibility_timeout; unacked messages are swept every
    tenth of it, between 1 and 10 s (never 0, which would spin)."""
    options = celery_config(Settings(visibility_timeout=timeout))["broker_transport_options"]
    assert options["visibility_timeout"] == timeout
    assert options["unacked_restore_interval"] == interval


def test_default_visibility_timeout_outlasts_the_slowest_allowed_chunk() -> None:
    """A healthy chunk is killed at its time limit before Redis would deliver it a second time:
    the default visibility timeout is longer than a full chunk's default time limit."""
    settings = Settings()
    slowest = settings.chunk_time_limit + settings.chunk_time_per_record * settings.chunk_size
    assert celery_config(settings)["broker_transport_options"]["visibility_timeout"] > slowest


def test_pool_children_get_time_to_load_the_model() -> None:
    """worker_proc_alive_timeout is settings.model_load_timeout, well above Celery's 4 s default
    (a replacement child loading the model was otherwise killed in a loop)."""
    assert celery_config(Settings(model_load_timeout=42))["worker_proc_alive_timeout"] == 42.0
    assert celery_config(Settings())["worker_proc_alive_timeout"] >= 10 * CELERY_PROC_ALIVE_DEFAULT


def test_events_for_flower_and_our_own_logging() -> None:
    """Task events (sent included) are on for Flower; the root logger is not hijacked."""
    conf = celery_config(Settings())
    assert conf["worker_send_task_events"] is True and conf["task_send_sent_event"] is True
    assert conf["worker_hijack_root_logger"] is False


def test_every_key_is_a_real_celery_setting() -> None:
    """A misspelt key would be silently ignored by Celery: each key is one Celery knows."""
    from celery.app.defaults import NAMESPACES, flatten

    known = {name for name, _ in flatten(NAMESPACES)}
    assert set(celery_config(Settings())) - known == set()


def test_every_transport_option_is_one_the_redis_transport_reads() -> None:
    """kombu's Redis channel ignores options it does not know: each one set here is one it reads."""
    from kombu.transport.redis import Channel

    options = celery_config(Settings())["broker_transport_options"]
    assert set(options) <= set(Channel.from_transport_options)


def test_worker_log_lines_carry_their_time_level_process_and_logger() -> None:
    config = celery_config(Settings())
    record = logging.LogRecord("embedfleet.fleet.tasks", logging.INFO, __file__, 1, "encoded job=%s", ("j",), None)
    record.processName = "ForkPoolWorker-1"
    line = logging.Formatter(config["worker_log_format"]).format(record)
    assert line.startswith("[") and "INFO/ForkPoolWorker-1] embedfleet.fleet.tasks: encoded job=j" in line
    assert "%(asctime)s" in config["worker_log_format"] and "%(asctime)s" in config["worker_task_log_format"]


RABBIT = "amqp://guest:guest@rabbit.example:5672/fleet"


def test_rabbitmq_gets_quorum_queues_and_no_redis_options() -> None:
    """An amqp:// broker gets the quorum declarations and publisher confirms, not Redis's
    visibility timeout (RabbitMQ re-queues a dead consumer's messages when its connection
    closes); the option is one the AMQP client takes."""
    import inspect

    from amqp import Connection

    conf = celery_config(Settings(broker_url=RABBIT))
    assert conf["broker_url"] == RABBIT and conf["task_queues"] is AMQP_QUEUES
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert "confirm_publish" in inspect.signature(Connection).parameters


def test_a_cut_off_worker_is_noticed_in_tens_of_seconds() -> None:
    """AMQP heartbeats every 10 s: RabbitMQ closes a silent worker's connection after two
    missed beats and re-queues its chunks, in tens of seconds (Celery's 120 s default meant
    minutes). Not lower than 5 s, which would drop healthy connections on a busy host. The
    worker reconnects for as long as the outage lasts."""
    conf = celery_config(Settings())
    assert conf["broker_heartbeat"] == BROKER_HEARTBEAT_SECONDS
    assert 5 <= 2 * BROKER_HEARTBEAT_SECONDS <= 30
    assert conf["broker_connection_retry"] is True and conf["broker_connection_retry_on_startup"] is True
    assert conf["broker_connection_max_retries"] is None


def test_quorum_queues_get_per_consumer_qos_and_delayed_retries() -> None:
    """Celery turns global QoS off for quorum queues (RabbitMQ refuses it on them) and waits out
    a retry's countdown in quorum delayed-delivery queues."""
    conf = celery_config(Settings(broker_url=RABBIT))
    assert conf["worker_detect_quorum_queues"] is True
    assert conf["broker_native_delayed_delivery_queue_type"] == "quorum"


def test_pointing_an_app_at_another_broker_changes_its_queues() -> None:
    """An app configured for Redis, pointed at RabbitMQ (a --broker-url flag, a notebook's second
    fleet), declares quorum queues and detects them; and back, the plain queues and Redis's
    options. Celery's cached declarations and router follow."""
    from celery import Celery
    from celery.utils.quorum_queues import detect_quorum_queues

    app = Celery("switching")
    app.conf.update(celery_config(Settings(broker_url="redis://127.0.0.1:6379/0")))
    assert not app.amqp.queues[EMBED_QUEUE].queue_arguments
    use_broker_config(app, Settings(broker_url=RABBIT))
    assert app.amqp.queues[EMBED_QUEUE].queue_arguments["x-queue-type"] == "quorum"
    assert detect_quorum_queues(app, "amqp") == (True, EMBED_QUEUE)
    assert app.amqp.router.queues is app.amqp.queues
    use_broker_config(app, Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert not app.amqp.queues[EMBED_QUEUE].queue_arguments
    assert "visibility_timeout" in app.conf.broker_transport_options
    app.close()


def _wait_seconds(policy: dict) -> float:
    """How long kombu's retry_over_time sleeps in all before the send fails."""
    from itertools import islice

    from kombu.utils.functional import fxrange

    steps = fxrange(policy["interval_start"], policy["interval_max"] + policy["interval_start"],
                    policy["interval_step"], repeatlast=True)
    return sum(islice(steps, policy["max_retries"]))


def test_a_send_waits_out_a_broker_restart_but_the_sweep_does_not() -> None:
    """A worker's send (a collect message, a retry) keeps trying for about a minute, so a
    broker restart of a few seconds loses no chunk; the heartbeat's sweep, which runs again
    at the next beat, gives up in under a second rather than stop the node's beats."""
    from embedfleet.fleet.sending import QUICK_RETRY_POLICY

    config = celery_config(Settings())
    assert config["task_publish_retry"] is True
    assert 45 <= _wait_seconds(config["task_publish_retry_policy"]) <= 90
    assert _wait_seconds(QUICK_RETRY_POLICY) < 1 < Settings().heartbeat_seconds
