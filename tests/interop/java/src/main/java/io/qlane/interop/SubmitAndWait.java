package io.qlane.interop;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * A qlane client written only against the published contract: the .avsc files, Avro
 * single-object encoding (Apache Avro's Java reference implementation) and Kafka.
 *
 * <p>Usage: SubmitAndWait BOOTSTRAP SCHEMA_DIR PREFIX WORKFLOW_ID QASM_FILE SHOTS TIMEOUT_S
 *
 * <p>Sends one JobRequest to PREFIX.jobs keyed by its workflow id, then reads PREFIX.results
 * (read_committed) until the JobResult with that key arrives, and prints one line per fact:
 * "fingerprint JobRequest HEX", "status ...", "mode ...", "shots_used N", "counts {...}".
 */
public final class SubmitAndWait {
    private SubmitAndWait() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 7) {
            System.err.println("usage: BOOTSTRAP SCHEMA_DIR PREFIX WORKFLOW_ID QASM_FILE SHOTS TIMEOUT_S");
            System.exit(2);
        }
        String bootstrap = args[0];
        File schemas = new File(args[1]);
        String prefix = args[2];
        String workflowId = args[3];
        String circuit = Files.readString(Path.of(args[4]), StandardCharsets.UTF_8);
        long shots = Long.parseLong(args[5]);
        long timeoutMs = Long.parseLong(args[6]) * 1000L;

        Schema requestSchema = new Schema.Parser().parse(new File(schemas, "JobRequest.avsc"));
        Schema resultSchema = new Schema.Parser().parse(new File(schemas, "JobResult.avsc"));
        System.out.printf("fingerprint JobRequest %016x%n",
                Long.reverseBytes(SchemaNormalization.parsingFingerprint64(requestSchema)));

        // Every field the schema defaults is filled by the builder: only the required ones here.
        GenericRecord request = new GenericRecordBuilder(requestSchema)
                .set("workflow_id", workflowId)
                .set("circuit", circuit)
                .set("shots", shots)
                .set("submitted_at_ms", System.currentTimeMillis())
                .build();
        ByteBuffer encoded = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), requestSchema)
                .encode(request);
        byte[] value = new byte[encoded.remaining()];
        encoded.get(value);

        String results = prefix + ".results";
        Properties consumerProps = new Properties();
        consumerProps.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        consumerProps.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        consumerProps.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        try (KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(
                consumerProps, new StringDeserializer(), new ByteArrayDeserializer())) {
            // Positioned at the end of the results before submitting, so nothing is missed.
            List<TopicPartition> partitions = new ArrayList<>();
            for (PartitionInfo info : consumer.partitionsFor(results, Duration.ofSeconds(30))) {
                partitions.add(new TopicPartition(results, info.partition()));
            }
            consumer.assign(partitions);
            consumer.seekToEnd(partitions);
            for (TopicPartition partition : partitions) {
                consumer.position(partition);
            }

            Properties producerProps = new Properties();
            producerProps.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            producerProps.put(ProducerConfig.ACKS_CONFIG, "all");
            try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(
                    producerProps, new StringSerializer(), new ByteArraySerializer())) {
                producer.send(new ProducerRecord<>(prefix + ".jobs", workflowId, value)).get();
            }
            System.out.println("submitted " + workflowId);

            BinaryMessageDecoder<GenericRecord> decoder =
                    new BinaryMessageDecoder<>(GenericData.get(), resultSchema);
            long deadline = System.currentTimeMillis() + timeoutMs;
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, byte[]> record : consumer.poll(Duration.ofMillis(500))) {
                    if (!workflowId.equals(record.key())) {
                        continue;
                    }
                    GenericRecord result = decoder.decode(record.value());
                    System.out.println("status " + result.get("status"));
                    System.out.println("mode " + result.get("mode"));
                    System.out.println("shots_used " + result.get("shots_used"));
                    for (Object circuitResult : (List<?>) result.get("circuits")) {
                        Map<?, ?> counts = (Map<?, ?>) ((GenericRecord) circuitResult).get("counts");
                        System.out.println("counts " + counts);
                    }
                    return;
                }
            }
            System.err.println("no JobResult for " + workflowId + " within the timeout");
            System.exit(3);
        }
    }
}
