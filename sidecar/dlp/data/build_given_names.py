#!/usr/bin/env python3
"""Build the DLP given-name gazetteer (given_names.txt, ambiguous_given_names.txt).

What it does
------------
1. Reads the first-name lists of two MIT-licensed fake-data libraries, pinned:
     * Python ``Faker`` (PyPI, FAKER_PY_VERSION below): every
       ``faker/providers/person/<locale>/__init__.py``; every class-level
       literal assigned to a name starting ``first_name`` / ``first_romanized_name``
       (first_names, first_names_male, first_names_female, *_unisex,
       *_nonbinary, ja_JP's (kanji, kana, romaji) pairs, ...). The files are
       parsed with ``ast`` and ``ast.literal_eval``; nothing is imported or run.
     * npm ``@faker-js/faker`` (FAKER_JS_VERSION below): every bundled locale
       module ``dist/<locale>-<hash>.js``; the object literal after
       ``first_name:{`` (keys generic / female / male; values are arrays of
       string literals or a template literal followed by ``.split(sep)``).
       Parsed with a tiny tokenizer; nothing is executed.
2. Normalises every entry: NFC; U+2019/U+02BC/U+2018 -> ASCII apostrophe,
   U+2010/U+2011 -> ASCII hyphen; an entry with spaces ("Ana Clara",
   Vietnamese "Bình Minh") is split into its words and only the words that
   start with an upper-case letter are kept (drops particles like "de").
   A name is kept only if it is made of Latin letters (Unicode name
   "LATIN ...", so accented and Latin Extended letters count), hyphens and
   apostrophes, starts and ends with a letter, and is 2..=24 characters long.
   Casing: words starting with a lower-case letter are particles and are
   dropped; mixed-case entries are kept as written ("DeShawn", "N'Golo"),
   except that a doubled initial capital is fixed ("COmfort" -> "Comfort");
   all-upper entries are capitalised per hyphen segment and after a
   one-letter apostrophe prefix ("N'GOLO" -> "N'Golo", "JEAN-LUC" -> "Jean-Luc").
   Locales in EXCLUDED_LOCALES (Esperanto) are skipped; non-Latin locales
   simply contribute nothing.
3. Adds a short hand-written supplement of very common given names in France
   (SUPPLEMENT below; written by the Vigie project, CC0) that the libraries
   lack.
4. Adds ASCII-folded variants (Hélène -> Helene, Łukasz -> Lukasz, Đức -> Duc)
   where they differ from the original.
5. Drops every entry whose lower-case form is in NOT_NAMES (function words
   such as "Le", "Du", "The", civilities, "Inc", old abbreviations "Wm").
6. Dedupes and sorts by UTF-8 byte order.
7. Ambiguous list: a given name is "ambiguous" when its lower-case form is a
   word of Debian's ``wfrench`` word list (/usr/share/dict/french; all its
   entries are lower-case common words, inflected forms included), or it is
   one of the hand-listed place names in PLACE_NAMES below (French/foreign
   places also used as given names). The 12 French month names are always
   listed (capitalised), whether or not they are in the given-name list.
   Apart from those 12, ambiguous_given_names.txt is a subset of
   given_names.txt.

Usage
-----
    python3 build_given_names.py [--faker-py DIR] [--faker-js DIR]
                                 [--wordlist /usr/share/dict/french]
                                 [--out-dir DIR]

``--faker-py DIR``: an unpacked Faker wheel/sdist (the directory holding
``faker/``); ``--faker-js DIR``: an unpacked npm tarball (the directory
holding ``package.json`` and ``dist/``). When omitted, the pinned versions
are fetched into a temporary directory with ``pip download`` / ``npm pack``
and checked against the SHA-256 sums recorded below.
The word list comes from ``apt-get install wfrench`` (Debian). Output goes
to the directory of this script by default. Standard library only; the
output is deterministic (no dates in the headers).
"""

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile

FAKER_PY_VERSION = "40.63.0"
FAKER_JS_VERSION = "10.6.0"
# SHA-256 of the artefacts the registries served when the data was built;
# checked in download mode (a mismatch stops the build).
FAKER_PY_SHA256 = "36627c20b575b4138f54b6c21f8703e9ab122fd487aca11319beec2aa6ca7232"  # faker-40.63.0-py3-none-any.whl
FAKER_JS_SHA256 = "13b79ed894af1a52a624fdb144384e1fd6c4afc1a30488830d3be64924333674"  # faker-js-faker-10.6.0.tgz

MIN_LEN = 2
MAX_LEN = 24

# --------------------------------------------------------------------------
# Hand-curated supplement -- written by the Vigie project, licence CC0 1.0.
# Very common given names in France (incl. frequent Maghreb, West-African,
# Portuguese and compound forms) that the two Faker packages lack.
# Kept short on purpose: only names a French reader would call common.
# --------------------------------------------------------------------------
SUPPLEMENT = """
# -- France, compound forms
Anne-Charlotte Anne-Claire Anne-Cécile Jean-Bosco Jean-de-Dieu Jean-Denis
Jean-Emmanuel Jean-Guy Jean-Hugues Jean-Noël Jean-Pascal Jean-Rémi
Jean-Sébastien Jean-Victor Jean-Étienne Jean-Robert Marc-André Marie-Agnès
Marie-Cécile Marie-Josée Marie-Odile Marie-Ève Paul-Henri Pierre-Marie
Guy-Roger Louanne Timothé Évan Éveline Gwénaël Goulven Gurvan Youenn
# -- Maghreb (Algeria, Morocco, Tunisia), incl. usual French transliterations
Abdelali Abdelaziz Abdelghani Abdelhak Abdelhakim Abdelhamid Abdelilah
Abdelkrim Abdellatif Abdelmajid Abdelmalek Abdelouahab Abdennour Abdenour
Abderrahim Abderrazak Abdeslam Abdessamad Adnane Azzedine Bachir Boualem
Chafik Chakib Chems Chérif Djamila Djilali Elhadj Fadoua Fahd Faïza Faiza
Fathi Fatima-Zahra Fayçal Faycal Fouad Ghania Ghizlane Hachemi Hanane Hassiba
Hichem Houria Lahcen Lakhdar Lounès Madjid Majid Messaoud Mimoun Mokhtar
Mouna Mounia Nadjet Nadjib Najat Nordine Noureddine Nourredine Ouahiba
Ouardia Rafik Redouane Ridha Saadia Saïda Slimane Smaïl Tahar Tarek Tayeb
Taïeb Wahiba Zahia Zakia Zoubida Zoubir Zouhair
# -- West and Central Africa
Adjoua Affoué Ahou Akissi Amenan Assétou Birame Bourama Brahima Dieumerci
Dramane Drissa Exaucé Fodé Glody Koffi Kouadio Kouamé Kouassi Lansana Mamadi
Merveille N'Golo N'Guessan Nafissatou Ndeye Ndèye Ndiaga Ngoné Oumarou Ousseynou Pape Papa
Serigne Sidiki Sitan Souley Tenin Yao
# -- Portugal, Turkey, Kurdish, Vietnam, China, Tamil, Haiti
Adelino Armindo Cidália Conceição Custódio Firmino Graça Horácio Idalina
Lurdes Rosário Ayşe Büşra Hacer Rojda Rojin Zozan Thị Hui Hua Ling Mei
Ying Zhen Xiaoming Xiaoyan Rajesh Sunil Sivakumar Tharshan Wilner Widline
"""

# --------------------------------------------------------------------------
# Place names (French regions/departments/cities, and foreign places frequent
# in French administrative files) that are also given names. Written by the
# Vigie project, CC0 1.0. Used only for the ambiguous list; a name here that
# is not in the given-name list is ignored.
# --------------------------------------------------------------------------
PLACE_NAMES = """
# -- France: country, regions, departments, cities
France Paris Lyon Marseille Lille Nice Nancy Metz Reims Brest Rennes Nantes
Tours Angers Caen Rouen Amiens Dijon Besançon Grenoble Valence Vienne Lourdes
Pau Tarbes Auch Agen Albi Nîmes Arles Orange Avignon Toulon Cannes Antibes
Grasse Menton Bastia Ajaccio Perpignan Narbonne Béziers Sète Montpellier
Toulouse Bordeaux Bayonne Biarritz Dax Périgueux Limoges Brive Tulle Aurillac
Rodez Cahors Montauban Foix Carcassonne Millau Mende Vichy Moulins Nevers
Bourges Blois Orléans Chartres Dreux Évreux Alençon Laval Lorient Vannes
Quimper Morlaix Cherbourg Lisieux Bayeux Dieppe Calais Dunkerque Arras Lens
Douai Valenciennes Cambrai Laon Soissons Beauvais Compiègne Meaux Melun
Provins Troyes Chaumont Épinal Colmar Mulhouse Strasbourg Belfort Vesoul Dole
Bourg Annecy Chambéry Albertville Gap Digne Briançon Sedan Verdun Saumur
Cholet Niort Poitiers Angoulême Cognac Saintes Royan Rochefort Vendôme
Châteauroux Guéret Montluçon Roanne Romans Montélimar Privas Aubenas Alès
Hyères Fréjus Draguignan Manosque Apt Carpentras Salon Aix Aubagne Martigues
Istres Florence Lorraine Alsace Bretagne Normandie Picardie Champagne
Bourgogne Provence Savoie Corse Auvergne Aquitaine Gascogne Limousin Berry
Anjou Maine Touraine Poitou Vendée Artois Flandre Occitanie Guyane Martinique
Guadeloupe Réunion Mayotte Polynésie Calédonie Aude Loire Marne Meuse Moselle
Somme Oise Orne Manche Sarthe Mayenne Charente Dordogne Gironde Landes Gers
Tarn Lot Ariège Var Vaucluse Drôme Ardèche Isère Jura Doubs Ain Rhône Cher
Indre Allier Creuse Corrèze Cantal Lozère Aveyron Hérault Gard Eure Yonne
Nièvre Aisne Ardennes Vosges Essonne Yvelines
# -- countries and continents (French, and English where it is a given name)
Maurice Israël Israel Salvador Santiago Sierra Leone Mali Kenya Ghana Niger
Tchad Chad Gabon Congo Guinée Togo Bénin Benin Cameroun Sénégal Algérie Maroc
Tunisie Libye Égypte Soudan Érythrée Éthiopie Somalie Comores Madagascar
Seychelles Haïti Cuba Jamaïque Jamaica Chili Pérou Colombie Venezuela Bolivie
Argentine Brésil Mexique Canada Inde India Chine China Japon Corée Vietnam
Laos Cambodge Thaïlande Malaisie Indonésie Philippines Turquie Syrie Liban
Jordanie Jordan Irak Iran Afghanistan Pakistan Bangladesh Népal Géorgie
Georgia Arménie Russie Ukraine Moldavie Roumanie Bulgarie Serbie Albanie
Kosovo Macédoine Grèce Italie Espagne Portugal Irlande Écosse Pologne Hongrie
Autriche Suisse Belgique Malte Chypre America Amérique Asie Afrique Europe
# -- cities frequent in residence-permit files (Maghreb, Africa, Europe, ...)
Oran Alger Constantine Annaba Blida Sétif Tlemcen Béjaïa Médéa Batna Biskra
Mascara Safi Salé Rabat Fès Meknès Tanger Oujda Nador Agadir Marrakech
Casablanca Tunis Sousse Sfax Monastir Bizerte Dakar Thiès Touba Kaolack
Ziguinchor Bamako Kayes Mopti Ségou Gao Tombouctou Niamey Abidjan Bouaké Man
Daloa Conakry Kankan Labé Lomé Cotonou Douala Yaoundé Kinshasa Brazzaville
Goma Moroni Anjouan Antananarivo Nouakchott Ouagadougou Bobo Milan Rome Roma
Sienne Siena Vérone Verona Venise Naples Turin Gênes Valencia Séville Sevilla
Grenade Granada Tolède Madrid Barcelone Porto Lisbonne Braga Viana Aveiro
Coimbra Faro Alba Deva Arad Cluj Aydın Van Ordu Kars Adana Izmir Bursa Konya
Istanbul Ankara Londres London Dublin Bristol Boston Dallas Houston Denver
Phoenix Orlando Cleveland Brooklyn Nevada Dakota Montana Sydney Berlin Vienna
Prague Varsovie Budapest Bucarest Athènes Athens Moscou Kiev Kyiv Odessa
Tbilissi Erevan Bakou Téhéran Kaboul Lahore Delhi Mumbai Dhaka Colombo Hanoï
Saïgon Hué Pékin Shanghai Tokyo Séoul Manille Jakarta Lima Quito Bogota
Caracas Havane Montréal Québec
"""

# Deliberately NOT listed although they are places: Dominique (la Dominique),
# Fátima, Sofia, Victoria, Regina, Madison, Austin, Chelsea, Lincoln, Kent,
# Devon, Chester, Adelaide, Sidney, Carolina, Virginia -- the given-name
# sense dominates by far in French administrative text.

# --------------------------------------------------------------------------
# NOT_NAMES: French and English function words (articles, pronouns,
# prepositions, conjunctions, auxiliaries), civilities/titles, company forms
# and old record abbreviations. An entry whose lower-case form is one of
# these is DROPPED from the given-name list altogether ("Le", "Les", "Du",
# "De", "The", "Son" come from the en / vi lists or from ASCII folding of
# Vietnamese Lê, Đệ, Sơn...: the accented originals stay; "Wm", "Chas" are
# 19th-century US record abbreviations; "Inc", "Co", "Sir" are folds of
# Turkish/Vietnamese names). Written by the Vigie project, CC0 1.0.
# --------------------------------------------------------------------------
NOT_NAMES = set("""
a à au aux avec ce ces cet cette ceci cela ça chez dans de des du elle elles
en et eux il ils je la le les leur leurs lui ma mais me mes moi mon ne ni nos
notre nous on ou où par pas pour qu que qui quoi sa se ses si son sur ta te
tes toi ton tu un une vos votre vous y est sont ont été être avoir fait car
donc or dont sous vers sans entre tout tous toute toutes même aussi très bien
non oui ici là comme quand lors puis après avant selon depuis pendant contre
parmi afin ainsi alors encore déjà plus moins peu trop
a an and are as at be been but by for from had has have he her him his i if
in into is it its me my no not of on or our she so than that the their them
then there these they this those to us was we were what when where which who
why with you your
mr mrs ms dr sr jr st ste mme mlle mmes me pr sir lady lord miss madame
monsieur docteur maître saint sainte inc ltd co wm chas thos edw robt
""".split())

# Locales left out: Esperanto (eo) first names are Esperanto renderings
# ("Aŭgustino", "Jakobo"), not names people carry.
EXCLUDED_LOCALES = {"eo"}

MONTHS = ("Janvier Février Mars Avril Mai Juin Juillet Août Septembre "
          "Octobre Novembre Décembre")

# Letters without a canonical decomposition, folded by hand.
EXTRA_FOLD = {
    "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "Ae", "œ": "oe", "Œ": "Oe",
    "ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d",
    "Ð": "D", "þ": "th", "Þ": "Th", "ı": "i", "ħ": "h", "Ħ": "H",
    "ə": "e", "Ə": "E", "ŋ": "ng", "Ŋ": "Ng", "ɛ": "e", "Ɛ": "E",
    "ɔ": "o", "Ɔ": "O", "ƙ": "k", "Ƙ": "K", "ɗ": "d", "Ɗ": "D",
    "ɓ": "b", "Ɓ": "B", "ƴ": "y", "Ƴ": "Y", "ŧ": "t", "Ŧ": "T",
}

APOSTROPHES = {"\u2019": "'", "\u02bc": "'", "\u2018": "'", "\u00b4": "'",
               "`": "'"}
HYPHENS = {"\u2010": "-", "\u2011": "-"}


# ------------------------------------------------------------------ sources
def check_sha256(path, want):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    if h.hexdigest() != want:
        sys.exit("sha256 mismatch for %s: %s (expected %s)"
                 % (path, h.hexdigest(), want))


def fetch_faker_py(tmp):
    dest = os.path.join(tmp, "pip")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                    "--only-binary", ":all:", "-d", dest,
                    "Faker==" + FAKER_PY_VERSION], check=True)
    whl = [f for f in os.listdir(dest) if f.endswith(".whl")][0]
    check_sha256(os.path.join(dest, whl), FAKER_PY_SHA256)
    out = os.path.join(tmp, "faker-py")
    with zipfile.ZipFile(os.path.join(dest, whl)) as z:
        z.extractall(out)
    return out


def fetch_faker_js(tmp):
    dest = os.path.join(tmp, "npm")
    os.makedirs(dest)
    subprocess.run(["npm", "pack", "--silent",
                    "@faker-js/faker@" + FAKER_JS_VERSION],
                   cwd=dest, check=True, stdout=subprocess.DEVNULL)
    tgz = [f for f in os.listdir(dest) if f.endswith(".tgz")][0]
    check_sha256(os.path.join(dest, tgz), FAKER_JS_SHA256)
    out = os.path.join(tmp, "faker-js")
    with tarfile.open(os.path.join(dest, tgz)) as t:
        if hasattr(tarfile, "data_filter"):
            t.extractall(out, filter="data")
        else:
            t.extractall(out)
    return os.path.join(out, "package")


def faker_py_version(root):
    for d in os.listdir(root):
        if d.startswith("faker-") and d.endswith(".dist-info"):
            with open(os.path.join(root, d, "METADATA"), encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.split(":", 1)[1].strip()
    pkg = os.path.join(root, "PKG-INFO")
    if os.path.exists(pkg):
        with open(pkg, encoding="utf-8") as f:
            for line in f:
                if line.startswith("Version:"):
                    return line.split(":", 1)[1].strip()
    return "unknown"


def strings_in(value):
    """All str leaves of a literal (tuples, lists, sets, dict keys)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k in value:
            yield from strings_in(k)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from strings_in(v)


FIRST_ATTR = re.compile(r"^first_(romanized_)?name")


def read_faker_py(root):
    """{locale: set(raw names)} from Faker's person providers."""
    base = os.path.join(root, "faker", "providers", "person")
    out = {}
    for loc in sorted(os.listdir(base)):
        path = os.path.join(base, loc, "__init__.py")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        names = set()
        for cls in tree.body:
            if not isinstance(cls, ast.ClassDef):
                continue
            for node in cls.body:
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, ast.AnnAssign) and node.value is not None:
                    targets, value = [node.target], node.value
                else:
                    continue
                if not any(isinstance(t, ast.Name) and FIRST_ATTR.match(t.id)
                           for t in targets):
                    continue
                # OrderedDict((...)) / dict(...) with one literal argument
                if (isinstance(value, ast.Call) and len(value.args) == 1
                        and not value.keywords):
                    value = value.args[0]
                try:
                    lit = ast.literal_eval(value)
                except (ValueError, SyntaxError, TypeError):
                    continue  # computed from other attributes: seen anyway
                names.update(strings_in(lit))
        if names:
            out[loc] = names
    return out


class JsParser:
    """Just enough JS to read `{key: [`a`,`b`], key: `a.b`.split(`.`)}`."""

    def __init__(self, text, pos):
        self.t, self.i = text, pos

    def ws(self):
        while self.i < len(self.t) and self.t[self.i] in " \t\r\n":
            self.i += 1

    def expect(self, s):
        self.ws()
        if not self.t.startswith(s, self.i):
            raise ValueError("expected %r at %d: %r"
                             % (s, self.i, self.t[self.i:self.i + 40]))
        self.i += len(s)

    def string(self):
        self.ws()
        q = self.t[self.i]
        if q not in "`'\"":
            raise ValueError("string expected at %d" % self.i)
        self.i += 1
        buf = []
        while True:
            c = self.t[self.i]
            if c == "\\":
                nxt = self.t[self.i + 1]
                if nxt == "u":
                    buf.append(chr(int(self.t[self.i + 2:self.i + 6], 16)))
                    self.i += 6
                else:
                    buf.append({"n": "\n", "t": "\t"}.get(nxt, nxt))
                    self.i += 2
                continue
            if c == q:
                self.i += 1
                return "".join(buf)
            if q == "`" and self.t.startswith("${", self.i):
                raise ValueError("template substitution at %d" % self.i)
            buf.append(c)
            self.i += 1

    def value(self):
        self.ws()
        if self.t[self.i] == "[":
            self.i += 1
            items = []
            while True:
                self.ws()
                if self.t[self.i] == "]":
                    self.i += 1
                    return items
                items.append(self.string())
                self.ws()
                if self.t[self.i] == ",":
                    self.i += 1
        s = self.string()
        self.ws()
        if self.t.startswith(".split(", self.i):
            self.i += len(".split(")
            sep = self.string()
            self.expect(")")
            return s.split(sep)
        return [s]

    def obj(self):
        self.expect("{")
        out = {}
        while True:
            self.ws()
            if self.t[self.i] == "}":
                self.i += 1
                return out
            m = re.compile(r"[A-Za-z_$][\w$]*").match(self.t, self.i)
            if not m:
                raise ValueError("key expected at %d" % self.i)
            self.i = m.end()
            self.expect(":")
            out[m.group(0)] = self.value()
            self.ws()
            if self.t[self.i] == ",":
                self.i += 1


def read_faker_js(root):
    """{locale: set(raw names)} from @faker-js/faker's bundled locales."""
    dist = os.path.join(root, "dist")
    out = {}
    for fn in sorted(os.listdir(dist)):
        if not fn.endswith(".js"):
            continue
        with open(os.path.join(dist, fn), encoding="utf-8") as f:
            text = f.read()
        m = re.match(r"^(.+)-[A-Za-z0-9_-]{8}\.js$", fn)
        loc = m.group(1) if m else fn[:-3]
        for m in re.finditer(r"first_name:(?=\{)", text):
            obj = JsParser(text, m.end()).obj()
            names = out.setdefault(loc, set())
            for vals in obj.values():
                names.update(vals)
    return out


# ------------------------------------------------------------ normalisation
def is_latin_letter(c):
    return c.isalpha() and unicodedata.name(c, "").startswith("LATIN ")


def capitalise(word):
    """Capitalise an all-upper/all-lower name per hyphen segment."""
    segs = []
    for seg in word.split("-"):
        seg = seg.lower()
        if len(seg) > 2 and seg[1] == "'":           # n'golo -> N'Golo
            seg = seg[0].upper() + "'" + seg[2].upper() + seg[3:]
        else:
            seg = seg[:1].upper() + seg[1:]
        segs.append(seg)
    return "-".join(segs)


def normalise(raw):
    """Yield the acceptable given names contained in one source entry."""
    s = unicodedata.normalize("NFC", raw.strip())
    for a, b in {**APOSTROPHES, **HYPHENS}.items():
        s = s.replace(a, b)
    for word in s.split():
        if not word[:1].isupper():
            continue                       # particles: "de", "da", "bin"
        if not all(is_latin_letter(c) or c in "-'" for c in word):
            continue
        if not (is_latin_letter(word[0]) and is_latin_letter(word[-1])):
            continue
        if "--" in word or "''" in word or "-'" in word or "'-" in word:
            continue
        letters = [c for c in word if c.isalpha()]
        if (len(word) > 3 and word[0].isupper() and word[1].isupper()
                and all(c.islower() for c in word[2:] if c.isalpha())):
            word = word[0] + word[1:].lower()          # typo: "COmfort"
        if all(c.isupper() for c in letters) or all(c.islower() for c in letters):
            word = capitalise(word)
        elif not word[0].isupper():
            continue
        if MIN_LEN <= len(word) <= MAX_LEN:
            yield word


def ascii_fold(name):
    d = unicodedata.normalize("NFD", name)
    d = "".join(c for c in d if not unicodedata.combining(c))
    d = "".join(EXTRA_FOLD.get(c, c) for c in d)
    d = unicodedata.normalize("NFC", d)
    return d if d.isascii() else None


def block_words(text):
    """Words of a hand-written block, skipping '#' comment lines."""
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            yield from line.split()


def byte_sorted(names):
    return sorted(names, key=lambda n: n.encode("utf-8"))


# --------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faker-py", help="unpacked Faker wheel (dir with faker/)")
    ap.add_argument("--faker-js", help="unpacked @faker-js/faker (dir with dist/)")
    ap.add_argument("--wordlist", default="/usr/share/dict/french",
                    help="Debian wfrench word list")
    ap.add_argument("--out-dir", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        py_root = args.faker_py or fetch_faker_py(tmp)
        js_root = args.faker_js or fetch_faker_js(tmp)
        py_ver = faker_py_version(py_root)
        with open(os.path.join(js_root, "package.json"), encoding="utf-8") as f:
            js_ver = json.load(f)["version"]
        py_raw = read_faker_py(py_root)
        js_raw = read_faker_js(js_root)

    for what, got, want in (("Faker", py_ver, FAKER_PY_VERSION),
                            ("@faker-js/faker", js_ver, FAKER_JS_VERSION)):
        if got != want:
            print("warning: %s is %s, generator pinned to %s"
                  % (what, got, want), file=sys.stderr)

    def collect(raw_by_locale):
        names, locales = set(), set()
        for loc, raws in raw_by_locale.items():
            if loc in EXCLUDED_LOCALES:
                continue
            kept = {n for r in raws for n in normalise(r)}
            names |= kept
            if kept:
                locales.add(loc)
        return names, locales

    py_names, py_locs = collect(py_raw)
    js_names, js_locs = collect(js_raw)
    sup_names = {n for line in block_words(SUPPLEMENT) for n in normalise(line)}
    base = py_names | js_names | sup_names
    folded = {f for n in base for f in [ascii_fold(n)] if f and f != n}
    dropped = {n for n in base | folded if n.lower() in NOT_NAMES}
    given = (base | folded) - dropped
    given_sorted = byte_sorted(given)

    # ---- ambiguous list
    with open(args.wordlist, encoding="utf-8") as f:
        words = {w.strip() for w in f if w.strip()}
    places = {n for line in block_words(PLACE_NAMES) for n in normalise(line)}
    places |= {f for p in places for f in [ascii_fold(p)] if f}
    months = set(MONTHS.split())
    by_word = {n for n in given if n.lower() in words}
    by_place = {n for n in given if n in places}
    ambiguous = byte_sorted(by_word | by_place | months)

    def wl_version():
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "wfrench"],
                               capture_output=True, text=True)
            return r.stdout.strip() or "unknown"
        except OSError:
            return "unknown"

    common = [
        "# Generated by build_given_names.py -- do not edit by hand; re-run it.",
        "# Sources (names only; see README.md for the licence notices):",
        "#   Faker %s (PyPI, MIT, (c) 2012 Daniele Faraglia): "
        "faker/providers/person/*/__init__.py first-name lists, %d locales"
        % (py_ver, len(py_locs)),
        "#   @faker-js/faker %s (npm, MIT, (c) 2022-2025 Faker contributors;"
        " (c) 2011-2020 Marak Squires): dist/<locale>.js person.first_name,"
        " %d locales" % (js_ver, len(js_locs)),
        "#   hand-written supplement of common names in France "
        "(Vigie project, CC0 1.0): %d names" % len(sup_names),
        "# Normalisation: NFC; Latin letters (incl. accented / Latin Extended),"
        " hyphen, ASCII apostrophe;",
        "#   %d..=%d chars; capitalised; multi-word entries split into words;"
        " ASCII-folded variants added;" % (MIN_LEN, MAX_LEN),
        "#   deduplicated; sorted by UTF-8 byte order.",
    ]
    header_given = common + [
        "# Counts: %d names = %d from Faker + %d more from @faker-js/faker"
        " + %d more from the supplement" % (
            len(given), len(py_names - dropped),
            len(js_names - py_names - dropped),
            len(sup_names - py_names - js_names - dropped)),
        "#   + %d ASCII-folded variants; %d NOT_NAMES entries dropped"
        " (%s)." % (len(folded - base - dropped), len(dropped),
                    " ".join(byte_sorted(dropped))),
        "# One name per line, UTF-8.",
    ]
    header_amb = common + [
        "# Ambiguity marking: lower-case form is a word of Debian wfrench %s"
        % wl_version(),
        "#   (%s, GPL-2+; only used as a membership test)," % args.wordlist,
        "#   or a hand-listed place name (Vigie project, CC0 1.0);"
        " plus the 12 French month names.",
        "# Counts: %d names = %d French words + %d place names"
        " (%d both) + %d month names not otherwise listed."
        % (len(ambiguous), len(by_word), len(by_place),
           len(by_word & by_place), len(months - by_word - by_place)),
        "# Every entry except month names not in given_names.txt is also"
        " in given_names.txt.",
        "# One name per line, UTF-8.",
    ]

    os.makedirs(args.out_dir, exist_ok=True)
    for fn, header, body in (("given_names.txt", header_given, given_sorted),
                             ("ambiguous_given_names.txt", header_amb, ambiguous)):
        with open(os.path.join(args.out_dir, fn), "w", encoding="utf-8",
                  newline="\n") as f:
            f.write("\n".join(header) + "\n")
            f.write("\n".join(body) + "\n")
        print("%s: %d names" % (fn, len(body)), file=sys.stderr)


if __name__ == "__main__":
    main()
